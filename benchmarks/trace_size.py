"""How many bytes a selection's trace holds, per layer and per field, at long prompts: one command.

    python -m benchmarks.trace_size                              # Llama-3.1-8B's heads, 2k / 16k / 32k tokens
    python -m benchmarks.trace_size --lengths 2048 16384 --layers 2

A trace is what the explorer keeps per selection (every layer's kept set, KVCrush's signatures, distances,
buckets, ...), so its size bounds how many selections a session can hold and how long an export takes. The
size depends on the prompt length and the head counts, not on the weights or the hidden size, so the model is
`random:llama-3.1-8b` (32 query heads, 8 KV heads) with a small hidden size (``--head-dim``, default 8) and
``--layers`` layers (default 2), which a CPU can prefill at 32k tokens. Per length, a window of essay tokens is
prefilled once; then SnapKV, KVCrush over SnapKV (token level) and KVCrush at block level select at
``--budget`` (default 0.25). Bytes are read from the trace's tensors (`LayerTrace.nbytes`, `RunTrace.nbytes`):
signatures packed eight per byte and integers narrowed (`kvcrush.compact`). A trace reads its scores through
a view of the prepared prompt's (`kvcrush.score_view`), shared by every selection on that prompt, so they are
not part of it; the ``shared scores`` column gives their bytes per layer once per prompt and scorer.

Goal (the long-prompt issue): a KVCrush trace at 16k tokens with these heads holds at most 400 KiB per layer.
Writes ``trace_size.csv`` (one row per length, policy and field), ``trace_size.json`` and ``trace_size.md`` to
``benchmarks/results/trace_size/`` (``--out`` to change).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as benchmarks.run: sleeping, not spinning, threads

import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from benchmarks.cli import script_parser, settings_dict, start, write_outputs  # noqa: E402
from benchmarks.env import environment  # noqa: E402
from benchmarks.markdown import markdown_table  # noqa: E402
from kvcrush import load_model, make_policy, prepare_encoded  # noqa: E402
from kvcrush.data import filler_tokens  # noqa: E402
from kvcrush.prompts import EncodedPrompt  # noqa: E402
from kvcrush.sizes import format_bytes  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "trace_size"
LENGTHS = (2048, 16384, 32768)
SHAPE = "random:llama-3.1-8b"
GOAL_BYTES = 400 * 1024  # per layer, KVCrush at 16k tokens with Llama-3.1-8B's heads
GOAL_LENGTH = 16384
POLICIES = {
    "snapkv": ("snapkv", {}),
    "kvcrush": ("kvcrush", {}),
    "kvcrush block16": ("kvcrush", {"granularity": "block", "block_size": 16}),
}


def measure(lm, n_tokens: int, budget: float) -> list[dict[str, Any]]:
    """One prefill of `n_tokens` essay tokens, then each policy's selection and its trace's bytes."""
    prepared = prepare_encoded(lm, EncodedPrompt(list(filler_tokens(lm.tokenizer, n_tokens, offset=1_000)), []))
    rows = []
    for label, (name, options) in POLICIES.items():
        started = time.perf_counter()
        trace = prepared.select(make_policy(name, budget=budget, **options))
        select_s = time.perf_counter() - started
        per_layer = [layer.nbytes for layer in trace.layers]
        fields: dict[str, int] = {}
        for layer in trace.layers:
            for key, size in layer.field_nbytes().items():
                fields[key] = fields.get(key, 0) + size
        layers = len(trace.layers)
        mean = sum(per_layer) / layers
        views = [layer.score_view.source for layer in trace.layers if layer.score_view is not None]
        shared = sum(view.untyped_storage().nbytes() for view in views) / layers
        rows.append({"length": n_tokens, "policy": label, "layers": layers,
                     "kept_per_head": int(trace.layers[0].kept.shape[1]),
                     "trace_bytes": trace.nbytes, "bytes_per_layer": mean, "shared_score_bytes_per_layer": shared,
                     "select_s": select_s,
                     "prefill_s": prepared.prefill_s,
                     "meets_goal": bool(mean <= GOAL_BYTES) if n_tokens == GOAL_LENGTH and name == "kvcrush" else None,
                     "fields": {key: size / layers for key, size in sorted(fields.items(), key=lambda kv: -kv[1])}})
    return rows


def markdown(rows: list[dict[str, Any]], env: dict[str, Any], budget: float) -> str:
    model = env.get("model", {})
    table = [[r["length"], r["policy"], r["kept_per_head"], format_bytes(r["bytes_per_layer"]),
              format_bytes(r["bytes_per_layer"] * 32), "" if r["meets_goal"] is None else
              ("yes" if r["meets_goal"] else "NO"), format_bytes(r["shared_score_bytes_per_layer"]),
              ", ".join(f"{k} {format_bytes(v)}" for k, v in list(r["fields"].items())[:4])] for r in rows]
    return "\n".join([
        f"# Trace bytes per selection (budget {budget:.0%})", "",
        f"Model {model.get('name', '')} with {model.get('query_heads', '')} query / {model.get('kv_heads', '')} KV "
        f"heads ({model.get('layers', '')} layers measured; a trace's bytes per layer do not depend on the depth); "
        f"command `{env.get('command', '')}`.", "",
        f"Goal: KVCrush at {GOAL_LENGTH:,} tokens holds at most {format_bytes(GOAL_BYTES)} per layer. "
        "'32 layers' is the per-layer size times Llama-3.1-8B's depth.", "",
        markdown_table(["tokens", "policy", "kept per head", "per layer", "32 layers", "goal",
                        "shared scores per layer", "largest fields per layer"], table),
    ])


def build_parser():
    parser = script_parser("trace_size", __doc__, full_doc=True, lengths=list(LENGTHS), budget=0.25, device="cpu",
                           threads=None, out=OUT)
    parser.add_argument("--layers", type=int, default=2, help="layers of the random model (default 2)")
    parser.add_argument("--head-dim", type=int, default=8, help="head size of the random model (default 8)")
    return parser


def main(argv: list[str] | None = None) -> Path:
    args = start(build_parser(), argv)
    heads = 32
    lm = load_model(SHAPE, device=args.device, num_hidden_layers=args.layers, head_dim=args.head_dim,
                    hidden_size=heads * args.head_dim, intermediate_size=4 * heads * args.head_dim,
                    max_position_embeddings=max(131072, max(args.lengths) + 64))
    env = environment(lm)
    env["command"] = " ".join(["python -m benchmarks.trace_size", *(argv if argv is not None else sys.argv[1:])])
    rows = []
    for n_tokens in args.lengths:
        rows.extend(measure(lm, n_tokens, args.budget))
        done = rows[-len(POLICIES):]
        print(f"{n_tokens:>7} tokens: " + "; ".join(f"{r['policy']} {format_bytes(r['bytes_per_layer'])}/layer"
                                                    for r in done), flush=True)
    flat = [{**{k: v for k, v in r.items() if k != "fields"}, "field": name, "field_bytes_per_layer": size}
            for r in rows for name, size in r["fields"].items()]
    text = markdown(rows, env, args.budget)
    write_outputs(args.out, "trace_size", flat, {"rows": rows, "settings": settings_dict(args), "environment": env},
                  text, list(flat[0]))
    print(text)
    return args.out


if __name__ == "__main__":
    main()
