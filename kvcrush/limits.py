"""Resource limits and exposure rules, in one place.

Three things live here:

- **Preflight memory check.** `preflight(lm, n_tokens, max_new_tokens, policy)` estimates what a run
  needs *before* it starts (the full KV cache, the prefill's logits and per-layer activations, the
  policy's scoring working set) and refuses with the numbers when that does not fit in the memory
  available now. The model's weights are already loaded, so they are already out of the available
  figure and are not counted again. The estimate is deliberately a little pessimistic
  (`SAFETY_FACTOR`); it is an estimate, not a guarantee.
- **Upload limit.** `MAX_TEXT_BYTES` (2 MiB, defined in `kvcrush.textio` and re-exported here) is the
  one documented limit on text the library, the CLI and the app accept. `.streamlit/config.toml`
  sets `server.maxUploadSize` (MiB) just above it so Streamlit refuses anything far larger before
  it is read, and the app's own `decode_text` check gives the exact message for the rest.
- **Which model names the shared web app accepts.** The library and the CLI load any local folder
  the user names (that is their purpose). The app is used by anonymous people at once, so
  `check_app_model_name` only lets it read local folders under `KVCRUSH_MODEL_DIRS`
  (default: the kvcrush cache folder), only builds random shapes whose weights fit in memory, and
  only fetches Hugging Face ids when `KVCRUSH_APP_ALLOW_HUB=1`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from kvcrush.errors import ModelError, PromptError
from kvcrush.paths import cache_dir
from kvcrush.sizes import format_bytes
from kvcrush.textio import MAX_TEXT_BYTES

__all__ = [
    "MAX_TEXT_BYTES", "SAFETY_FACTOR", "MemoryEstimate", "available_memory", "estimate_run_memory",
    "preflight", "max_tokens_that_fit", "device_needs", "weights_bytes", "allowed_model_dirs", "allowed_model_path",
    "check_app_model_name",
]

SAFETY_FACTOR = 1.3  # the estimate leaves out allocator slack, temporaries and Python objects
FIXED_OVERHEAD = 64 * 1024 * 1024  # tokenizer output, traces, decode-step tensors
SCORE_COPIES = 3  # attention logits, masked logits and softmax exist together for a moment
# Chunked scoring (H2O) allocates and frees one `[query_heads, chunk, N]` block per chunk and layer;
# on CPU the allocator keeps part of that resident. Measured on random:smollm2-135m at 2k tokens:
# peak RSS grew by about half a chunk's working set per layer, which this factor accounts for.
CHUNK_RESIDUE_PER_LAYER = 0.5


# --- available memory ------------------------------------------------------------------------------


def _linux_mem_available() -> int | None:
    """`MemAvailable` from /proc/meminfo, capped by a cgroup v2 / v1 memory limit when there is one."""
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
                    break
            else:
                return None
    except (OSError, ValueError):
        return None
    limit = _cgroup_headroom()
    return available if limit is None else min(available, limit)


def _cgroup_headroom() -> int | None:
    """Bytes left under this container's memory limit, or None when unlimited or unknown."""
    pairs = (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
    )
    for limit_file, usage_file in pairs:
        try:
            raw = Path(limit_file).read_text().strip()
            if raw == "max":
                return None
            limit, usage = int(raw), int(Path(usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit >= 1 << 60:  # cgroup v1 reports "unlimited" as a huge number
            return None
        return max(0, limit - usage)
    return None


def available_memory(device: torch.device | str) -> int | None:
    """Bytes a run may still allocate on `device`, or None when it cannot be told (then no check).

    CUDA: the driver's free memory plus what this process's caching allocator holds unused
    (`kvcrush.devices.free_bytes`: memory an earlier run freed counts as free). CPU: `MemAvailable` from
    /proc/meminfo (Linux; capped by the cgroup limit inside containers). Elsewhere: None.
    """
    from kvcrush.devices import free_bytes

    device = torch.device(device)
    if device.type == "cuda":
        return free_bytes(device)
    if device.type == "cpu" and os.path.exists("/proc/meminfo"):
        return _linux_mem_available()
    return None


# --- the estimate ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a run needs beyond the loaded weights, by part. `total` includes the safety factor."""

    tokens: int
    kv_cache: int
    logits: int
    activations: int
    attention: int
    scoring: int
    hidden: int = 0

    @property
    def raw(self) -> int:
        return (self.kv_cache + self.logits + self.activations + self.attention + self.scoring + self.hidden
                + FIXED_OVERHEAD)

    @property
    def total(self) -> int:
        return int(self.raw * SAFETY_FACTOR)

    def parts(self) -> str:
        items = [("KV cache", self.kv_cache), ("prefill logits", self.logits), ("activations", self.activations),
                 ("attention matrices", self.attention), ("scoring", self.scoring),
                 ("kept hidden states", self.hidden)]
        return ", ".join(f"{name} {format_bytes(size)}" for name, size in items if size)


def _element_size(dtype: torch.dtype) -> int:
    return dtype.itemsize


def estimate_run_memory(lm: Any, n_tokens: int, max_new_tokens: int, policy: Any = None, prepared: Any = None,
                        hidden_rows: int = 0) -> MemoryEstimate:
    """What a run of `n_tokens` prompt tokens and `max_new_tokens` needs, by part.

    Without `prepared` (a prefill is about to run):
    - KV cache: `lm.kv_bytes_per_token() * (n_tokens + max_new_tokens)` (the full cache exists
      before compression), plus a compressed copy of at most the same size.
    - Prefill logits: `[1, vocab]` (only the last position's logits are computed), float32 copy too.
    - Activations of one layer at a time: residual stream, q/k/v with their rotated copies, MLP.
    - Kept hidden states: `hidden_rows` rows of every layer's attention input (see `kvcrush.prepared`).
    With `prepared` (its full cache, activations and hidden states already exist and are already out of
    the available memory): the compressed copy, the decoded tokens, and scoring when this policy's
    scorer has not run on it yet; a scorer whose query rows were not kept (H2O on a long prompt,
    `PreparedPrompt.needs_second_prefill`) prefills again, so a second full KV cache and one layer's
    activations count too.
    - Attention matrices `[query_heads, N, N]` only with eager attention (SDPA does not keep them).
    - Scoring: H2O's query chunks `[query_heads, chunk, N]` and SnapKV's window `[query_heads, window, N]`
      in float32 (times `SCORE_COPIES`), the expanded float32 keys `[query_heads, N, head_dim]`, and
      the sort indices of the selection (`[query_heads, N]` int64, twice); for H2O on CPU also what the
      allocator keeps of its chunks (`CHUNK_RESIDUE_PER_LAYER`).

    Measured peak RSS above the loaded model (random:smollm2-135m, fp32, CPU, 2k tokens): snapkv
    0.5 GiB against an estimate of 0.8 GiB; h2o 0.4 to 1.2 GiB (it varies with the allocator) against 1.2 GiB.
    """
    config = lm.config
    n = int(n_tokens)
    total_tokens = n + int(max_new_tokens)
    element = _element_size(lm.dtype)
    hidden = int(config.hidden_size)
    intermediate = int(getattr(config, "intermediate_size", 4 * hidden))
    vocab = int(config.vocab_size)
    q_heads, kv_heads, head_dim = int(lm.query_heads), int(lm.kv_heads), int(lm.head_dim)
    per_token = int(lm.kv_bytes_per_token())

    logits = vocab * (element + 4)
    qkv = n * (q_heads + 2 * kv_heads) * head_dim * element * 2
    prefill_activations = n * (4 * hidden + 4 * intermediate) * element + qkv
    eager = getattr(config, "_attn_implementation", "sdpa") == "eager"
    prefill_attention = q_heads * n * n * element * 2 if eager else 0
    if prepared is not None:
        kv_cache = per_token * total_tokens
        activations = attention = 0
        if policy is not None and prepared.needs_second_prefill(policy):
            kv_cache += per_token * n
            activations, attention = prefill_activations, prefill_attention
    else:
        kv_cache = 2 * per_token * total_tokens
        activations, attention = prefill_activations, prefill_attention
    kept_hidden = int(hidden_rows) * hidden * element * int(lm.n_layers)

    scoring = 0
    if policy is not None and getattr(policy, "evicts", False):
        scoring = q_heads * n * 8 * 2  # argsort indices of the selection and the signatures
        cached = prepared is not None and policy.scorer_key() in prepared.scorers
        rows = 0 if cached else policy.scoring_rows(n)
        if not cached:
            scoring += int(lm.n_layers) * q_heads * n * 4  # the scores kept on the prepared prompt
        if rows:
            scoring += q_heads * n * head_dim * 4  # keys expanded to query heads, float32
            scoring += SCORE_COPIES * q_heads * rows * n * 4
            if policy.chunked_scoring and torch.device(lm.device).type == "cpu":
                scoring += int(CHUNK_RESIDUE_PER_LAYER * int(lm.n_layers) * q_heads * rows * n * 4)
    return MemoryEstimate(n, kv_cache, logits, activations, attention, scoring, kept_hidden)


def device_needs(lm: Any, estimate: MemoryEstimate) -> dict[torch.device, int]:
    """`estimate.total` split over the devices a model's layers live on (one entry for a model on one device).

    What grows with the layers (KV cache, kept hidden states, scoring) splits by each device's share of the
    layers; a device runs one of its layers at a time, so each needs one layer's activations and attention;
    the logits and the fixed overhead land on the first device (where inputs go; the head's device may differ,
    which the safety factor covers).
    """
    from kvcrush.devices import layer_devices

    per_layer = layer_devices(lm.model) if len(lm.devices) > 1 else [torch.device(lm.device)]
    counts: dict[torch.device, int] = {}
    for device in per_layer:
        counts[device] = counts.get(device, 0) + 1
    layered = estimate.kv_cache + estimate.hidden + estimate.scoring
    needs = {}
    for n, (device, count) in enumerate(counts.items()):
        raw = layered * count / len(per_layer) + estimate.activations + estimate.attention
        if n == 0:
            raw += estimate.logits + FIXED_OVERHEAD
        needs[device] = int(raw * SAFETY_FACTOR)
    return needs


def _short_device(lm: Any, estimate: MemoryEstimate, reader: Callable[[torch.device], int | None]
                  ) -> tuple[torch.device, int, int] | None:
    """The first device whose share of `estimate` does not fit: (device, bytes needed, bytes free), else None."""
    for device, need in device_needs(lm, estimate).items():
        free = reader(device)
        if free is not None and need > free:
            return device, need, free
    return None


def max_tokens_that_fit(lm: Any, max_new_tokens: int, policy: Any, available: int | None = None,
                        prepared: Any = None, reader: Callable[[torch.device], int | None] | None = None) -> int:
    """The longest prompt (tokens) whose estimate fits (0 if none does): in `available` bytes on a model's one
    device, or on every device as `reader(device)` tells."""
    def free(device: torch.device) -> int | None:
        return reader(device) if reader is not None else available

    def fits(n: int) -> bool:
        return _short_device(lm, estimate_run_memory(lm, n, max_new_tokens, policy, prepared), free) is None

    low, high = 0, max(1, int(lm.max_tokens))
    if not fits(1):
        return 0
    while low < high:
        middle = (low + high + 1) // 2
        if fits(middle):
            low = middle
        else:
            high = middle - 1
    return low


def preflight(
    lm: Any,
    n_tokens: int,
    max_new_tokens: int,
    policy: Any = None,
    available: Callable[[torch.device], int | None] | None = None,
    prepared: Any = None,
    hidden_rows: int = 0,
) -> MemoryEstimate:
    """Refuse a run that would not fit in memory, before it allocates anything.

    Raises `PromptError` with the estimate, the memory available and what to do. Returns the
    estimate when it fits (or when the available memory cannot be read on this platform).
    `available(device) -> bytes | None` defaults to `available_memory`. A model sharded over several GPUs is
    checked on each of them (`device_needs`).
    """
    estimate = estimate_run_memory(lm, n_tokens, max_new_tokens, policy, prepared, hidden_rows)
    reader = available or available_memory  # looked up at call time, so tests can replace it
    short = _short_device(lm, estimate, reader)
    if short is None:
        return estimate
    device, need, free = short
    fits = max_tokens_that_fit(lm, max_new_tokens, policy, prepared=prepared, reader=reader)
    advice = (
        f"Shorten the prompt to about {fits:,} tokens or fewer"
        if fits > 0
        else "Even a one-token prompt does not fit"
    )
    raise PromptError(
        f"Not enough memory for this run: {n_tokens:,} prompt tokens + {max_new_tokens:,} new tokens need "
        f"about {format_bytes(estimate.total)} ({estimate.parts()}, plus {SAFETY_FACTOR:g}x headroom)"
        f"{'' if need == estimate.total else f', {format_bytes(need)} of it on {device},'} but only "
        f"{format_bytes(free)} is available on {device}. {advice}, lower max_new_tokens, close other "
        f"programs or use a smaller model."
    )


# --- models the shared web app may load ------------------------------------------------------------

MODEL_DIRS_ENV = "KVCRUSH_MODEL_DIRS"
ALLOW_HUB_ENV = "KVCRUSH_APP_ALLOW_HUB"
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")


def allowed_model_dirs() -> list[Path]:
    """Folders the app may read models from: `$KVCRUSH_MODEL_DIRS` (os.pathsep-separated), else the cache."""
    raw = os.environ.get(MODEL_DIRS_ENV, "")
    dirs = [Path(part).expanduser() for part in raw.split(os.pathsep) if part.strip()] or [cache_dir()]
    return [Path(os.path.realpath(d)) for d in dirs]


def _looks_like_path(name: str) -> bool:
    """The same rule `load_model` uses: a name that starts like a path, or names something that exists."""
    return name.startswith((".", "/", "~", "\\")) or Path(name).expanduser().exists()


def allowed_model_path(name: str) -> bool:
    """True iff `name` resolves (symlinks followed, `..` collapsed) inside one of `allowed_model_dirs()`."""
    if not isinstance(name, str) or not name.strip() or "\x00" in name:
        return False
    resolved = Path(os.path.realpath(Path(name.strip()).expanduser()))
    return any(resolved == root or resolved.is_relative_to(root) for root in allowed_model_dirs())


def weights_bytes(config: Any, dtype: torch.dtype = torch.float32) -> int:
    """Approximate bytes of a decoder-only transformer's weights, from its config."""
    hidden = int(config.hidden_size)
    layers = int(config.num_hidden_layers)
    q_heads = int(config.num_attention_heads)
    kv_heads = int(getattr(config, "num_key_value_heads", q_heads) or q_heads)
    head_dim = int(getattr(config, "head_dim", None) or hidden // q_heads)
    intermediate = int(getattr(config, "intermediate_size", 4 * hidden))
    vocab = int(config.vocab_size)
    attention = hidden * (q_heads + 2 * kv_heads) * head_dim + q_heads * head_dim * hidden
    per_layer = attention + 3 * hidden * intermediate + 2 * hidden
    embeddings = vocab * hidden * (1 if getattr(config, "tie_word_embeddings", False) else 2)
    return (layers * per_layer + embeddings + hidden) * _element_size(dtype)


def check_app_model_name(
    name: str | None, device: torch.device | str = "cpu", dtype: torch.dtype | None = None
) -> str | None:
    """Validate a model name typed into the shared web app; returns it stripped, or raises `ModelError`.

    Allowed: the packaged default (None, "", "packaged", ...); `random:SHAPE` for a known shape whose
    weights fit in the memory available on `device`; a local folder under `KVCRUSH_MODEL_DIRS`
    (default: the kvcrush cache folder, `$KVCRUSH_CACHE` or ~/.cache/kvcrush); a Hugging Face id
    only when `KVCRUSH_APP_ALLOW_HUB=1` (downloads land in the Hugging Face cache, nowhere else).
    Any other local path is refused without touching it beyond resolving its name.
    """
    from kvcrush.models.loading import PACKAGED_ALIASES, RANDOM_PREFIX
    from kvcrush.models.shapes import SHAPES

    if name is None:
        return None
    if not isinstance(name, str):
        raise ModelError(f"Model name must be text, got {type(name).__name__}.")
    key = name.strip()
    if key.lower() in PACKAGED_ALIASES:
        return key
    if len(key) > 512 or "\x00" in key or any(ord(c) < 32 for c in key):
        raise ModelError("That model name contains control characters or is too long.")
    if key.startswith(RANDOM_PREFIX):
        shape = key[len(RANDOM_PREFIX):]
        if shape not in SHAPES:
            raise ModelError(f"Unknown random shape {shape!r}; choose one of {', '.join(SHAPES)}.")
        from kvcrush.models.loading import resolve_dtype
        from kvcrush.models.shapes import shape_config

        # The dtype the run will load in (bf16 on a GPU): fp32 bytes would refuse shapes that fit.
        needed = weights_bytes(shape_config(shape), resolve_dtype(dtype, torch.device(device)))
        free = available_memory(device)
        if free is not None and needed * SAFETY_FACTOR > free:
            raise ModelError(
                f"random:{shape} needs about {format_bytes(needed)} of weights but only {format_bytes(free)} "
                f"is available on {torch.device(device)}; pick a smaller shape."
            )
        return key
    if _looks_like_path(key):
        if not allowed_model_path(key):
            roots = ", ".join(str(d) for d in allowed_model_dirs())
            raise ModelError(
                f"This app only loads model folders under {roots}. Ask the person running it to put the "
                f"model there or to add its folder to {MODEL_DIRS_ENV}."
            )
        return key
    if not _HUB_ID.match(key) or ".." in key:
        raise ModelError(
            f"{key!r} is neither a Hugging Face id (organisation/name), a random:SHAPE, nor an allowed folder."
        )
    if os.environ.get(ALLOW_HUB_ENV, "").strip().lower() not in ("1", "true", "yes"):
        raise ModelError(
            f"This app does not download models from the Hugging Face Hub (set {ALLOW_HUB_ENV}=1 when starting "
            f"it to allow that), so {key!r} cannot be used; pick the packaged model or a folder under "
            f"{', '.join(str(d) for d in allowed_model_dirs())}."
        )
    return key

