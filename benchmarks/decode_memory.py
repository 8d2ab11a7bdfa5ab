"""The KV cache during a long answer, with and without decode-time eviction: one command.

    python -m benchmarks.decode_memory                      # packaged SmolLM2, 2k-token essay, 256 new tokens
    python -m benchmarks.decode_memory --model random:llama-3-8b --device cuda --tokens 8192

A window of essay tokens (no chat template, so the model continues the essay for all `--new-tokens`)
is prefilled once (`kvcrush.prepare_encoded`). Each policy then answers twice at the same budget: with
`decode_interval=0` (compress once after the prompt: the cache grows by one token per generated token)
and with `decode_interval=--interval` (evict back to the budget whenever a layer holds budget + interval
tokens per head). Reported per run, from the real cache tensors: the tokens per head at the end and at
the peak, the KV bytes after the answer, decode time per token and the share spent evicting, and how
many generated tokens agree with the run without decode-time eviction.

Writes ``decode_memory.csv``, ``decode_memory.json`` and ``decode_memory.md`` to
``benchmarks/results/decode_memory/`` (``--out`` to change).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as benchmarks.run: sleeping, not spinning, threads

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from benchmarks.cli import script_parser, settings_dict, start, write_outputs  # noqa: E402
from benchmarks.env import environment  # noqa: E402
from benchmarks.markdown import markdown_table  # noqa: E402
from kvcrush import load_model, make_policy, prepare_encoded  # noqa: E402
from kvcrush.data import filler_tokens  # noqa: E402
from kvcrush.metrics import token_agreement  # noqa: E402
from kvcrush.prompts import EncodedPrompt  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "decode_memory"
POLICIES = ("snapkv", "kvcrush", "tova", "knorm")


def measure(lm, n_tokens: int, budget: int, interval: int, new_tokens: int,
            policies: list[str]) -> list[dict[str, Any]]:
    prepared = prepare_encoded(lm, EncodedPrompt(list(filler_tokens(lm.tokenizer, n_tokens, offset=2_000))))
    per_token = lm.kv_bytes_per_token()
    rows = []
    for name in policies:
        plain = None
        for k in (0, interval):
            result = prepared.generate(make_policy(name, budget=budget, decode_interval=k), max_new_tokens=new_tokens)
            plain = result if k == 0 else plain
            timings = result.timings
            final_tokens = result.kv_bytes_final / per_token  # per head, averaged over layers
            rows.append({
                "policy": name, "prompt_tokens": prepared.n_budgeted, "budget": budget, "decode_interval": k,
                "generated": timings.decode_tokens, "final_tokens_per_head": final_tokens,
                "peak_tokens_per_head": result.peak_cache_tokens or final_tokens,
                "kv_bytes_after_prompt": result.kv_bytes_after, "kv_bytes_final": result.kv_bytes_final,
                "full_cache_bytes_final": (prepared.n_budgeted + timings.decode_tokens - 1) * per_token,
                "evictions": len(result.decode_evictions),
                "decode_ms_per_token": 1000 * timings.decode_per_token_s,
                "evict_pct_of_decode": 100 * timings.decode_evict_s / timings.decode_s if timings.decode_s else 0.0,
                "agreement_with_interval_0": token_agreement(result.new_token_ids, plain.new_token_ids),
            })
    return rows


def markdown(rows: list[dict[str, Any]], env: dict[str, Any]) -> str:
    table = markdown_table(
        ["policy", "interval", "generated", "tokens/head end", "peak", "KV MiB end", "full cache MiB",
         "evictions", "decode ms/token", "evicting %", "agreement"],
        [[r["policy"], r["decode_interval"], r["generated"], f"{r['final_tokens_per_head']:.0f}",
          f"{r['peak_tokens_per_head']:.0f}", f"{r['kv_bytes_final'] / 2**20:.2f}",
          f"{r['full_cache_bytes_final'] / 2**20:.2f}", r["evictions"], f"{r['decode_ms_per_token']:.1f}",
          f"{r['evict_pct_of_decode']:.1f}", f"{r['agreement_with_interval_0']:.0%}"] for r in rows])
    first = rows[0]
    return (f"# KV cache during a {first['generated']}-token answer\n\n{env.get('model', '')}, "
            f"{first['prompt_tokens']} prompt tokens, budget {first['budget']} tokens per head.\n\n{table}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = script_parser("decode_memory", __doc__, policies=list(POLICIES), model=None, device="cpu", out=OUT)
    parser.add_argument("--tokens", type=int, default=2048, help="prompt tokens (essay text)")
    parser.add_argument("--budget", type=int, default=512, help="tokens each KV head keeps (default 512)")
    parser.add_argument("--interval", type=int, default=32, help="decode_interval of the evicting runs")
    parser.add_argument("--new-tokens", type=int, default=256)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = start(build_parser(), argv)  # keeps freed memory: timings without page faults (benchmarks/env.py)
    began = time.perf_counter()
    lm = load_model(args.model, device=args.device)
    rows = measure(lm, args.tokens, args.budget, args.interval, args.new_tokens, args.policies)
    env = {**environment(lm), "model": lm.name}
    text = markdown(rows, env)
    write_outputs(args.out, "decode_memory", rows, {"rows": rows, "settings": settings_dict(args),
                                                    "environment": env}, text)
    print(text)
    print(f"Wrote {args.out} in {time.perf_counter() - began:.0f} s.", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
