"""Eviction on a quantized KV cache (issue 13): stored bytes, continuation NLL and decode time, one command.

    python -m benchmarks.quantized                  # packaged SmolLM2, 2k-token essays, 5 samples
    python -m benchmarks.quantized --samples 20 --out /tmp/quantized

Four tables, all on our engine (`kvcrush.prepare_encoded` once per prompt, then every policy from it):

- **bytes**: KV bytes after compressing a `--tokens` essay at `--budget`, measured from the stored
  tensors (packed codes, float16 scales and zero points, slots, the full-precision residual window),
  for each policy at 16/8/4 bits, against the full cache in the model's dtype and in float32; once with
  the model in float32 and once in bfloat16.
- **nll**: the teacher-forced NLL of the true 64-token continuation of `--samples` essay windows
  (offsets `--offset + i * 7919` tokens into the packaged essays), each policy at 16/8/4 bits, with the
  mean and largest per-sample difference from the same policy at 16 bits.
- **equal bytes**: the same samples, every system held to the bytes per KV head of SnapKV at
  `--budget` in `--equal-bits` bits (`budget_bytes`): fewer tokens at more bits, more at fewer, and
  KVCrush with cheaper representatives.
- **decode**: milliseconds per generated token on the built-in ~2k needle (question appended after
  compression), `--new-tokens` greedy tokens, median of `--repeats` runs.

Writes ``quantized.csv`` (every row, with a ``table`` column), ``quantized.json`` and ``quantized.md`` to
``benchmarks/results/quantized/`` (``--out`` to change).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as benchmarks.run: sleeping, not spinning, threads

import argparse  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402

from benchmarks.cli import script_parser, settings_dict, start, write_outputs  # noqa: E402
from benchmarks.engines import outcome_of  # noqa: E402
from benchmarks.env import environment  # noqa: E402
from benchmarks.markdown import markdown_table  # noqa: E402
from kvcrush import load_model, make_policy, prepare, prepare_encoded  # noqa: E402
from kvcrush.data import continuation_example, needle_example  # noqa: E402
from kvcrush.kvcache import cache_bytes  # noqa: E402
from kvcrush.prompts import EncodedPrompt  # noqa: E402
from kvcrush.quant import KVStorage  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "quantized"
BITS = (16, 8, 4)
# (label, policy name, options): the systems every table runs at each of BITS.
SYSTEMS = (
    ("full", "full", {}),
    ("snapkv", "snapkv", {}),
    ("kvcrush", "kvcrush", {"base": "snapkv"}),
    ("kvcrush rep4", "kvcrush", {"base": "snapkv", "representative_bits": 4}),
)
# (label, policy name, options) held to the bytes of SnapKV at the budget in `--equal-bits` bits.
EQUAL_BYTES = (
    ("snapkv 16-bit", "snapkv", {"kv_bits": 16}),
    ("snapkv 8-bit", "snapkv", {"kv_bits": 8}),
    ("snapkv 4-bit", "snapkv", {"kv_bits": 4}),
    ("snapkv 2-bit", "snapkv", {"kv_bits": 2}),
    ("kvcrush 16-bit", "kvcrush", {"kv_bits": 16}),
    ("kvcrush 8-bit", "kvcrush", {"kv_bits": 8}),
    ("kvcrush 8-bit, rep 4", "kvcrush", {"kv_bits": 8, "representative_bits": 4}),
    ("kvcrush 4-bit", "kvcrush", {"kv_bits": 4}),
    ("kvcrush 4-bit, rep 2", "kvcrush", {"kv_bits": 4, "representative_bits": 2}),
)
CONTINUATION = 64
SAMPLE_STRIDE = 7919


def _storage_label(policy) -> str:
    storage: KVStorage = policy.storage()
    return f"{storage.kv_bits}" + (f" (rep {storage.representative_bits})" if storage.mixed else "")


def measure_bytes(lm, n_tokens: int, budget: float) -> list[dict[str, Any]]:
    """KV bytes per system and precision on one essay window, from the stored tensors."""
    context, _ = continuation_example(lm.tokenizer, n_tokens, 1, offset=0)
    prepared = prepare_encoded(lm, EncodedPrompt(context, [], []))
    full_bytes = cache_bytes(prepared.cache)
    fp32_bytes = full_bytes * 4 // prepared.cache.layers[0].keys.element_size()
    rows = []
    for label, name, options in SYSTEMS:
        for bits in BITS:
            policy = make_policy(name, budget=budget, kv_bits=bits, **options)
            result = prepared.generate(policy, 0, reference_ids=[context[-1]])
            kept = outcome_of(result).kept_tokens
            rows.append({"table": "bytes", "model_dtype": str(lm.dtype).removeprefix("torch."), "system": label,
                         "kv_bits": bits, "storage": _storage_label(policy), "tokens": n_tokens, "budget": budget,
                         "kept_per_head": kept, "kv_bytes": result.kv_bytes_after, "full_bytes": full_bytes,
                         "x_smaller_than_full": full_bytes / result.kv_bytes_after,
                         "x_smaller_than_fp32_full": fp32_bytes / result.kv_bytes_after})
    return rows


def _samples(lm, n_samples: int, n_tokens: int, offset: int) -> list[tuple[list[int], list[int]]]:
    return [continuation_example(lm.tokenizer, n_tokens, CONTINUATION, offset=offset + i * SAMPLE_STRIDE)
            for i in range(n_samples)]


def measure_nll(lm, samples, budget: float, equal_bits: int | None, progress) -> list[dict[str, Any]]:
    """Per-sample continuation NLL of every system: at each of BITS, or (`equal_bits`) every EQUAL_BYTES
    system at the bytes of SnapKV at `budget` in `equal_bits` bits."""
    equal_bytes = equal_bits is not None
    rows = []
    for index, (context, continuation) in enumerate(samples):
        prepared = prepare_encoded(lm, EncodedPrompt(context, [], []))
        if equal_bytes:
            reference = prepared.generate(make_policy("snapkv", budget=budget, kv_bits=equal_bits), 0,
                                          reference_ids=continuation)
            per_head = reference.kv_bytes_after // (lm.n_layers * lm.kv_heads)
            systems = [(label, make_policy(name, budget=budget, budget_bytes=per_head, **options))
                       for label, name, options in EQUAL_BYTES]
        else:
            per_head = None
            systems = [(label, make_policy(name, budget=budget, kv_bits=bits, **options))
                       for label, name, options in SYSTEMS for bits in BITS]
        results = prepared.score_many([policy for _, policy in systems], continuation)
        for (label, policy), result in zip(systems, results, strict=True):
            kept = outcome_of(result).kept_tokens
            crush = sum(layer.crush_used for layer in result.trace.layers) / len(result.trace.layers)
            rows.append({"table": "equal_bytes" if equal_bytes else "nll", "sample": index, "system": label,
                         "kv_bits": policy.kv_bits, "storage": _storage_label(policy), "budget": budget,
                         "budget_bytes_per_head": per_head, "kept_per_head": kept, "representatives": crush,
                         "kv_bytes": result.kv_bytes_after, "nll": result.reference_nll})
        progress(index + 1, len(samples))
    return rows


def measure_decode(lm, new_tokens: int, repeats: int, budget: float) -> list[dict[str, Any]]:
    """Median decode milliseconds per token at each precision, on the built-in ~2k needle."""
    example = needle_example(lm.tokenizer, 2000, depth=0.5, seed=0)
    prepared = prepare(lm, example.context, question=example.question)
    prepared.generate(make_policy("snapkv", budget=budget), min(new_tokens, 4))  # warm-up, discarded
    rows = []
    for label, name, options in SYSTEMS[1:3]:
        per_token = {bits: [] for bits in BITS}
        texts = {}
        for _ in range(repeats):
            for bits in BITS:  # interleaved, so drift in the machine's speed hits every precision alike
                result = prepared.generate(make_policy(name, budget=budget, kv_bits=bits, **options), new_tokens)
                per_token[bits].append(1000 * result.timings.decode_per_token_s)
                texts[bits] = result.text
        base = statistics.median(per_token[16])
        for bits in BITS:
            median = statistics.median(per_token[bits])
            rows.append({"table": "decode", "system": label, "kv_bits": bits, "budget": budget,
                         "new_tokens": new_tokens, "repeats": repeats, "decode_ms_per_token": median,
                         "decode_ms_min": min(per_token[bits]), "decode_ms_max": max(per_token[bits]),
                         "x_of_16_bit": median / base, "same_answer_as_16_bit": texts[bits] == texts[16]})
    return rows


def summarize_nll(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean NLL per system and precision, with the paired difference from the same system at 16 bits."""
    by_key: dict[tuple[str, int], dict[int, float]] = {}
    for row in rows:
        by_key.setdefault((row["system"], row["kv_bits"]), {})[row["sample"]] = row["nll"]
    summary = []
    for (system, bits), values in by_key.items():
        base = by_key.get((system, 16), {})
        diffs = [values[s] - base[s] for s in values if s in base]
        summary.append({"system": system, "kv_bits": bits, "n": len(values),
                        "mean_nll": statistics.fmean(values.values()),
                        "mean_diff_vs_16": statistics.fmean(diffs) if diffs else float("nan"),
                        "max_abs_diff_vs_16": max(map(abs, diffs)) if diffs else float("nan")})
    return summary


def summarize_equal_bytes(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by_system: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_system.setdefault(row["system"], []).append(row)
    return [{"system": system, "n": len(items), "kept_per_head": statistics.fmean(r["kept_per_head"] for r in items),
             "representatives": statistics.fmean(r["representatives"] for r in items),
             "kv_bytes": statistics.fmean(r["kv_bytes"] for r in items),
             "mean_nll": statistics.fmean(r["nll"] for r in items)} for system, items in by_system.items()]


def markdown(bytes_rows, nll_summary, equal_summary, decode_rows, settings: dict[str, Any]) -> str:
    mib = 2**20
    parts = [f"# Eviction on a quantized KV cache\n\nBudget {settings['budget']:.0%}, {settings['tokens']} "
             f"prompt tokens, {settings['samples']} continuation samples of {CONTINUATION} tokens.\n"]
    parts.append("## Stored KV bytes\n\n" + markdown_table(
        ["model dtype", "system", "bits", "kept/head", "KV MiB", "x smaller than full", "x smaller than fp32 full"],
        [[r["model_dtype"], r["system"], r["storage"], f"{r['kept_per_head']:.0f}", f"{r['kv_bytes'] / mib:.2f}",
          f"{r['x_smaller_than_full']:.2f}", f"{r['x_smaller_than_fp32_full']:.2f}"] for r in bytes_rows]))
    parts.append("## Continuation NLL\n\n" + markdown_table(
        ["system", "bits", "n", "mean NLL", "mean diff vs 16-bit", "max |diff| vs 16-bit"],
        [[r["system"], r["kv_bits"], r["n"], f"{r['mean_nll']:.4f}", f"{r['mean_diff_vs_16']:+.4f}",
          f"{r['max_abs_diff_vs_16']:.4f}"] for r in nll_summary]))
    parts.append(f"## Equal bytes (SnapKV's bytes at the budget in {settings['equal_bits']} bits)\n\n"
                 + markdown_table(
        ["system", "n", "kept/head", "representatives/head", "KV MiB", "mean NLL"],
        [[r["system"], r["n"], f"{r['kept_per_head']:.0f}", f"{r['representatives']:.0f}",
          f"{r['kv_bytes'] / mib:.2f}", f"{r['mean_nll']:.4f}"] for r in equal_summary]))
    parts.append("## Decode time\n\n" + markdown_table(
        ["system", "bits", "ms/token (median)", "min-max", "x of 16-bit", "same answer as 16-bit"],
        [[r["system"], r["kv_bits"], f"{r['decode_ms_per_token']:.1f}",
          f"{r['decode_ms_min']:.1f}-{r['decode_ms_max']:.1f}", f"{r['x_of_16_bit']:.2f}",
          "yes" if r["same_answer_as_16_bit"] else "no"] for r in decode_rows]))
    return "\n\n".join(parts) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = script_parser("quantized", __doc__, budget=0.25, repeats=3, model=None, device="cpu", out=OUT,
                           helps={"budget": "share of the prompt kept per KV head",
                                  "repeats": "decode-time repeats (median reported)"})
    parser.add_argument("--tokens", type=int, default=2048, help="prompt tokens (essay text)")
    parser.add_argument("--samples", type=int, default=5, help="continuation samples for the NLL tables")
    parser.add_argument("--offset", type=int, default=100_000, help="token offset of the first sample")
    parser.add_argument("--equal-bits", type=int, default=4, choices=(16, 8, 4, 2),
                        help="the equal-bytes table holds every system to SnapKV's bytes at --budget in these bits")
    parser.add_argument("--new-tokens", type=int, default=32, help="decoded tokens per decode-time run")
    parser.add_argument("--no-bf16", action="store_true", help="skip the bytes table with the model in bfloat16")
    return parser


def _progress(what: str):
    began = time.perf_counter()

    def show(done: int, total: int) -> None:
        spent = time.perf_counter() - began
        eta = spent / done * (total - done)
        print(f"\r{what}: {done}/{total} samples, {spent:.0f} s, ETA {eta:.0f} s", end="", file=sys.stderr,
              flush=True)
        if done == total:
            print(file=sys.stderr)

    return show


def main(argv: list[str] | None = None) -> int:
    args = start(build_parser(), argv)  # keeps freed memory: timings without page faults (benchmarks/env.py)
    began = time.perf_counter()
    lm = load_model(args.model, device=args.device)
    with torch.no_grad():
        bytes_rows = measure_bytes(lm, args.tokens, args.budget)
        if not args.no_bf16:
            bytes_rows += measure_bytes(load_model(args.model, device=args.device, dtype=torch.bfloat16),
                                        args.tokens, args.budget)
        samples = _samples(lm, args.samples, args.tokens, args.offset)
        nll_rows = measure_nll(lm, samples, args.budget, None, _progress("NLL"))
        equal_rows = measure_nll(lm, samples, args.budget, args.equal_bits, _progress("equal bytes"))
        decode_rows = measure_decode(lm, args.new_tokens, args.repeats, args.budget)
    settings = settings_dict(args) | {"wall_s": time.perf_counter() - began}
    nll_summary, equal_summary = summarize_nll(nll_rows), summarize_equal_bytes(equal_rows)
    text = markdown(bytes_rows, nll_summary, equal_summary, decode_rows, settings)
    env = {**environment(lm), "model": lm.name}
    write_outputs(args.out, "quantized", bytes_rows + nll_rows + equal_rows + decode_rows, {
        "bytes": bytes_rows, "nll": nll_summary, "equal_bytes": equal_summary, "decode": decode_rows,
        "samples": nll_rows + equal_rows, "settings": settings, "environment": env}, text)
    print(text)
    print(f"Wrote {args.out} in {settings['wall_s']:.0f} s.", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
