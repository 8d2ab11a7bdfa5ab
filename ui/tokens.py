"""Per-token views of a recorded trace: status arrays, a table, and escaped HTML spans.

All values come from the trace (`token_status`, `scores`, `signatures`, `distances`, `buckets`);
this module only lays them out per token for display.
"""

from __future__ import annotations

import html

import numpy as np
import pandas as pd

from kvcrush.explain import text_spans
from kvcrush.explain.span_fate import layer_status as engine_layer_status
from kvcrush.metrics import kept_mask
from kvcrush.trace import EVICTED, PROTECTED, LayerTrace, RunTrace
from ui.colors import DECODE_EVICTED, SHOWN_STATUSES, STATUS_COLORS, STATUS_LABELS, STATUS_SHORT, STATUS_TEXT_COLORS

# The question is under the budget only in query-aware runs; tokens are evicted while decoding only with
# decode-time eviction, after the first generated tokens.
ONLY_WHEN_PRESENT = (PROTECTED, DECODE_EVICTED)


def layer_status(layer: LayerTrace, head: int) -> np.ndarray:
    """`[n_tokens]` status codes for one KV head. A no-op layer (budget >= prompt) keeps everything,
    which the view shows as kept rather than as one long 'recent' window (`kvcrush.explain.span_fate.layer_status`)."""
    return engine_layer_status(layer, head).numpy()


def status_matrix(trace: RunTrace, head: int) -> np.ndarray:
    """`[layers, n_tokens]` status codes of one KV head across all layers."""
    return np.stack([layer_status(layer, head) for layer in trace.layers])


def _middle(values, layer: LayerTrace, fill: float = np.nan) -> np.ndarray:
    """`values` (a `[M]` tensor over the layer's middle, or None) spread over every context token."""
    full = np.full(layer.n_tokens, fill, dtype=np.float64)
    if values is not None and values.numel():
        data = values.float().numpy()
        full[layer.middle_start : layer.middle_start + len(data)] = data
    return full


def token_distances(layer: LayerTrace) -> np.ndarray:
    """Hamming distance to the anchor per token (a block's distance for each of its tokens)."""
    if layer.distances is None:
        return np.full(layer.n_tokens, np.nan)
    if layer.granularity == "block" and layer.blocks is not None:
        full = np.full(layer.n_tokens, np.nan)
        for (start, end), distance in zip(layer.blocks.tolist(), layer.distances.tolist(), strict=True):
            full[start:end] = distance
        return full
    return _middle(layer.distances, layer)


def token_signatures(layer: LayerTrace) -> list[str]:
    """Each token's signature as a bit string ('' outside the middle or without signatures)."""
    out = [""] * layer.n_tokens
    if layer.signatures is None:
        return out
    bits = layer.signatures.numpy().astype(np.uint8)
    chars = np.where(bits > 0, "1", "0")
    for offset, row in enumerate(chars):
        out[layer.middle_start + offset] = "".join(row)
    return out


def token_buckets(layer: LayerTrace) -> np.ndarray:
    """Index of the bucket each evicted candidate token belongs to (-1 elsewhere)."""
    full = np.full(layer.n_tokens, -1, dtype=np.int64)
    for index, bucket in enumerate(layer.buckets):
        full[layer.unit_tokens(bucket).numpy()] = index
    return full


def token_bits(layer: LayerTrace, head: int) -> np.ndarray:
    """`[n_tokens]` bits each context token is stored at in this KV head (`LayerTrace.row_bits`, issue 13):
    16 for full precision, 8/4/2 for quantized rows, 0 for evicted tokens."""
    bits = np.zeros(layer.n_tokens, dtype=np.int64)
    kept = layer.kept[head].numpy()
    bits[kept] = 16 if layer.row_bits is None else layer.row_bits[head].numpy()
    return bits


def token_table(trace: RunTrace, layer: LayerTrace, head: int) -> pd.DataFrame:
    """One row per context token with everything the hover shows (also the CSV export)."""
    status = layer_status(layer, head)
    heads = layer.kept.shape[0]
    per_head = {f"score_h{h}": _middle(None if layer.scores is None else layer.scores[h], layer) for h in range(heads)}
    return pd.DataFrame({
        "position": np.arange(layer.n_tokens),
        "token": trace.token_strings[: layer.n_tokens],
        "status": [STATUS_LABELS[int(s)] for s in status],
        "status_code": status,
        "score": per_head[f"score_h{head}"],
        "signature": token_signatures(layer),
        "distance": token_distances(layer),
        "bucket": token_buckets(layer),
        "heads_keeping": kept_mask(layer).sum(dim=0).numpy(),
        "bits": token_bits(layer, head),
        **per_head,
    })


def counts(status: np.ndarray) -> dict[int, int]:
    values, number = np.unique(status, return_counts=True)
    found = dict(zip(values.tolist(), number.tolist(), strict=True))
    return {code: found.get(code, 0) for code in SHOWN_STATUSES}


def visible(token: str) -> str:
    """A token as HTML: escaped, newlines shown as a return mark plus a line break, tabs as arrows."""
    text = html.escape(token, quote=False).replace("\t", "→")
    return text.replace("\n", "↵<br>") if "\n" in text else text


def tooltip(row, head_scores: list[str]) -> str:
    parts = [f"#{row.position} {row.token!r}", f"status: {row.status}"]
    if not np.isnan(row.score):
        parts.append(f"score: {row.score:.4g}")
        if len(head_scores) > 1:
            parts.append("all KV heads: " + " / ".join(f"{getattr(row, name):.3g}" for name in head_scores))
    if row.signature:
        parts.append(f"signature: {row.signature}")
    if not np.isnan(row.distance):
        parts.append(f"distance to anchor: {int(row.distance)}")
    if row.bucket >= 0:
        parts.append(f"bucket: {row.bucket}")
    parts.append(f"kept by {row.heads_keeping} KV head(s)")
    if 0 < row.bits < 16:
        parts.append(f"stored at {row.bits} bits")
    return "\n".join(parts)


# Storage precision of a kept token (kv_bits / representative_bits), drawn under it: fewer bits, sparser line.
PRECISION_STYLES = {8: "2px solid #333333", 4: "2px dashed #333333", 2: "2px dotted #333333"}


def token_css() -> str:
    """One rule per status, so each span carries only its class (400 spans with inline styles were 150 KB)."""
    rules = [".kv-tokens .kvt{border-radius:3px;padding:1px 0;cursor:pointer;}",
             ".kv-tokens .kvt[data-followed]{outline:2px solid #000000;outline-offset:0;}"]
    for bits, style in PRECISION_STYLES.items():  # the second channel: how a kept row is stored
        rules.append(f".kv-tokens .kvb-{bits}{{border-bottom:{style};}}")
    for code in SHOWN_STATUSES:
        extra = {EVICTED: "text-decoration:line-through;text-decoration-color:#aaaaaa;",
                 DECODE_EVICTED: "text-decoration:line-through;text-decoration-color:#D55E00;"}.get(code, "")
        rules.append(f".kv-tokens .kvt-{STATUS_SHORT[code]}{{background:{STATUS_COLORS[code]};"
                     f"color:{STATUS_TEXT_COLORS.get(code, '#111111')};{extra}}}")
    return "".join(rules)


def _span(row, head_scores: list[str], marked: tuple[int, int]) -> str:
    code = int(row.status_code)
    followed = ' data-followed="1"' if marked[0] <= row.position < marked[1] else ""
    precision = f" kvb-{row.bits}" if row.bits in PRECISION_STYLES else ""
    return (f'<span class="kvt kvt-{STATUS_SHORT[code]}{precision}" data-pos="{row.position}"{followed} '
            f'title="{html.escape(tooltip(row, head_scores), quote=True)}">{visible(row.token)}</span>')


def tokens_html(table: pd.DataFrame, start: int, end: int, marked: tuple[int, int] | None = None) -> str:
    """Coloured spans for tokens `[start, end)` with title tooltips; everything is HTML-escaped. Tokens in
    `marked` (`[start, end)`, the followed span) are outlined."""
    head_scores = [c for c in table.columns if c.startswith("score_h")]
    marked = marked or (0, 0)
    spans = "".join(_span(row, head_scores, marked) for row in table.iloc[start:end].itertuples(index=False))
    return (
        f"<style>{token_css()}</style>"
        '<div class="kv-tokens" style="font-family: ui-monospace, SFMono-Regular, Menlo, monospace; '
        "font-size: 0.82rem; line-height: 1.85; white-space: pre-wrap; word-break: break-word; "
        'max-height: 540px; overflow-y: auto; border: 1px solid #d0d0d0; border-radius: 6px; padding: 10px;">'
        f"{spans}</div>"
    )


def bit_counts(table: pd.DataFrame) -> dict[int, int]:
    """Kept tokens per storage precision (16, 8, 4, 2) in the table's KV head; empty when nothing is quantized."""
    bits = table["bits"].to_numpy()
    if not ((bits > 0) & (bits < 16)).any():
        return {}
    return {b: int((bits == b).sum()) for b in (16, *PRECISION_STYLES) if (bits == b).any()}


def legend_html(status_counts: dict[int, int] | None = None, precision_counts: dict[int, int] | None = None) -> str:
    items = []
    for code in SHOWN_STATUSES:
        if code in ONLY_WHEN_PRESENT and status_counts is not None and not status_counts.get(code):
            continue
        count = "" if status_counts is None else f" ({status_counts.get(code, 0):,})"
        color = STATUS_TEXT_COLORS.get(code, "#111111")
        items.append(
            f'<span class="kv-legend-item kv-legend-{STATUS_SHORT[code]}" style="display:inline-block;'
            f'margin:2px 10px 2px 0;"><span style="background:{STATUS_COLORS[code]};color:{color};'
            f'border-radius:3px;padding:1px 6px;">{html.escape(STATUS_LABELS[code])}</span>{count}</span>'
        )
    for bits, count in (precision_counts or {}).items():
        style = PRECISION_STYLES.get(bits, "2px solid transparent")
        name = "full precision" if bits == 16 else f"{bits}-bit"
        items.append(f'<span class="kv-legend-item kv-legend-bits-{bits}" style="display:inline-block;margin:2px 10px '
                     f'2px 0;"><span style="border-bottom:{style};padding:0 6px;">{name}</span> ({count:,})</span>')
    return '<div class="kv-legend" style="font-size:0.85rem;">' + "".join(items) + "</div>"


def find_token(token_strings: list[str], needle: str) -> int | None:
    """Position of the token where the first occurrence of `needle` starts (case-insensitive)."""
    hits = text_spans(token_strings, needle, limit=1)
    return hits[0].start if hits else None


def mark_decode_evicted(table: pd.DataFrame, held_prompt: np.ndarray) -> pd.DataFrame:
    """The token table with the prompt tokens kept at compression but no longer held (`held_prompt[i]`
    False) marked as evicted while decoding. A copy; the original is untouched."""
    status = table["status_code"].to_numpy()
    later = (status != EVICTED) & ~held_prompt[: len(status)]
    if not later.any():
        return table
    out = table.copy()
    out.loc[later, "status_code"] = DECODE_EVICTED
    out.loc[later, "status"] = STATUS_LABELS[DECODE_EVICTED]
    if "bits" in out:
        out.loc[later, "bits"] = 0  # no longer stored
    return out


GENERATED_HELD = "#56B4E9"  # sky blue: the generated tokens' own colour, distinct from the prompt's statuses


def generated_html(tokens: list[str], held: np.ndarray, first_position: int) -> str:
    """The tokens generated so far in one line: held ones in blue, evicted ones struck through.

    tokens: each generated token's text; held: `[len(tokens)]` bool; first_position: token 0's position.
    """
    spans = []
    for i, (token, kept) in enumerate(zip(tokens, held, strict=True)):
        cls = "kvg-held" if kept else "kvg-evicted"
        title = f"generated token {i} (#{first_position + i}): {'held' if kept else 'evicted while decoding'}"
        spans.append(f'<span class="kvg {cls}" title="{html.escape(title, quote=True)}">{visible(token)}</span>')
    style = (f".kv-generated-strip .kvg{{border-radius:3px;padding:1px 0;}}"
             f".kv-generated-strip .kvg-held{{background:{GENERATED_HELD};color:#111111;}}"
             f".kv-generated-strip .kvg-evicted{{background:{STATUS_COLORS[DECODE_EVICTED]};"
             f"color:{STATUS_TEXT_COLORS[DECODE_EVICTED]};text-decoration:line-through;}}")
    body = "".join(spans) if spans else "<em>no tokens generated yet</em>"
    return (f"<style>{style}</style>"
            '<div class="kv-generated-strip" style="font-family: ui-monospace, SFMono-Regular, Menlo, monospace; '
            "font-size: 0.82rem; line-height: 1.85; white-space: pre-wrap; word-break: break-word; "
            'max-height: 160px; overflow-y: auto; border: 1px solid #d0d0d0; border-radius: 6px; padding: 6px 10px;">'
            f"{body}</div>")
