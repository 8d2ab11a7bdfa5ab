"""Time decoding with and without recording what the answer attends to (not a test).

    PYTHONPATH=. .venv/bin/python tests/measure_attention_use.py [--repeats 5] [--tokens 32]

Packaged SmolLM2-135M-Instruct, the built-in ~2k-token needle, query-aware, KVCrush over SnapKV at 50%
(the app's first screen), one prefill; then `repeats` rounds, each decoding the answer once without and
once with `kvcrush.attention_use.AttentionRecorder` (alternating, so load changes hit both alike). Prints
and writes test-artifacts/measure-attention-use.json: the median decode time per token of each, and the
overhead, from the medians and as the median of each round's ratio (target: at most 15%; nothing when off,
because no hook is registered then).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import kvcrush
from kvcrush.attention_use import REPRESENTATIVE_C, AttentionRecorder
from kvcrush.data import builtin_examples

OUT = Path(__file__).resolve().parents[1] / "test-artifacts" / "measure-attention-use.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=32)
    options = parser.parse_args()
    lm = kvcrush.load_model()
    example = builtin_examples(lm.tokenizer)["Needle in essays (~2k tokens)"]
    prepared = kvcrush.prepare(lm, example.context, question=example.question, query_aware=True)
    policy = kvcrush.make_policy("kvcrush", 0.5)
    selection = prepared.select(policy)
    prepared.generate(policy, max_new_tokens=4, selection=selection)  # warm-up
    off, on = [], []
    for _ in range(options.repeats):
        plain = prepared.generate(policy, max_new_tokens=options.tokens, selection=selection)
        off.append(plain.timings.decode_s / max(plain.timings.decode_tokens, 1))
        recorder = AttentionRecorder()
        recorded = prepared.generate(policy, max_new_tokens=options.tokens, selection=selection, observer=recorder)
        on.append(recorded.timings.decode_s / max(recorded.timings.decode_tokens, 1))
        assert recorded.new_token_ids == plain.new_token_ids
    report = {"tokens": options.tokens, "repeats": options.repeats, "off_s_per_token": off, "on_s_per_token": on,
              "off_median": statistics.median(off), "on_median": statistics.median(on),
              "overhead": statistics.median(on) / statistics.median(off) - 1,
              "paired_overhead": statistics.median(b / a - 1 for a, b in zip(off, on, strict=True)),
              "answer": plain.text, "representatives_share": float(recorder.result.overall()[REPRESENTATIVE_C]),
              "representatives_rows": float(recorder.result.cache_overall()[REPRESENTATIVE_C])}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(report, indent=2))
    print(json.dumps({k: v for k, v in report.items() if not isinstance(v, list)}, indent=2))


if __name__ == "__main__":
    main()
