"""KVCrushPress inside NVIDIA kvpress's own pipeline on the packaged model: one command.

    python -m benchmarks.kvpress_pipeline [--tokens 1000] [--ratios 0.75 0.5]

Runs kvpress's `pipeline("kv-press-text-generation")` on a needle prompt (`kvcrush.data.needle_example`)
with no press, with `SnapKVPress` and with `KVCrushPress(SnapKVPress())` (`kvcrush.integrations.kvpress`)
at each compression ratio, passing a `DynamicCache` so the KV bytes are read from the real tensors
(`kvcrush.kvcache.cache_bytes`; the pipeline leaves only the compressed context in the cache). Prints
the bytes before and after, the representatives KVCrush kept per layer, and each answer.
"""

from __future__ import annotations

import argparse

from transformers import DynamicCache, pipeline

import kvcrush
from kvcrush.data import needle_example
from kvcrush.integrations import require_kvpress
from kvcrush.kvcache import cache_bytes, cache_lengths

# Before importing kvpress: says what is wrong and what to install when it is missing or rejects this transformers.
require_kvpress()

from kvpress import SnapKVPress  # noqa: E402

from kvcrush.integrations.kvpress import KVCrushPress  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.kvpress_pipeline", description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=1000, help="needle prompt length")
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.75, 0.5], help="kvpress compression ratios")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    args = parser.parse_args(argv)

    lm = kvcrush.load_model()
    example = needle_example(lm.tokenizer, args.tokens, 0.5, seed=0)
    pipe = pipeline("kv-press-text-generation", model=lm.model, tokenizer=lm.tokenizer)
    n_context = pipe.preprocess(example.context, [example.question], "", 10**10)["context_ids"].shape[1]
    print(f"question: {example.question!r}  expected: {example.answers}")
    runs = [("no press", None)]
    for ratio in args.ratios:
        runs += [(f"SnapKVPress r={ratio}", SnapKVPress(compression_ratio=ratio)),
                 (f"KVCrushPress(SnapKVPress()) r={ratio}", KVCrushPress(SnapKVPress(), compression_ratio=ratio))]
    for name, press in runs:
        cache = DynamicCache(config=lm.model.config)
        answer = pipe(example.context, question=example.question, press=press, cache=cache,
                      max_new_tokens=args.max_new_tokens)["answer"]
        before, after = cache_bytes(cache, n_tokens=n_context), cache_bytes(cache)
        extra = ""
        if isinstance(press, KVCrushPress):
            representatives = sum(int(layer.crush_used) for layer in press.trace) / len(press.trace)
            extra = f" | {representatives:.0f} representatives/layer"
        found = any(a in answer for a in example.answers)
        print(f"{name:34s} context {n_context} tok -> {cache_lengths(cache)[0]}/layer | KV {before / 2**20:.2f} MiB -> "
              f"{after / 2**20:.2f} MiB ({after / before:.0%}) | needle {'found' if found else 'missed'}{extra}\n"
              f"    answer: {answer!r}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
