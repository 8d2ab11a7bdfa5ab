"""Command line: `python -m kvcrush generate --policy kvcrush --base snapkv --budget 0.25 --prompt-file F`."""

from __future__ import annotations

import argparse
import json
import sys

from kvcrush.crush import ANCHOR_MODES
from kvcrush.errors import KVCrushError
from kvcrush.policies import BASE_CHOICES, POLICIES, make_policy
from kvcrush.textio import read_text_file


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m kvcrush", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("generate", help="compress a prompt's KV cache and generate an answer")
    source = run.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt-file", help="UTF-8 text file with the context")
    source.add_argument("--prompt", help="the context as a string")
    run.add_argument("--question", help="question appended after the (compressed) context")
    run.add_argument("--query-aware", action="store_true", help="use the question as the observation window")
    run.add_argument("--policy", default="kvcrush", choices=list(POLICIES), help="eviction policy (default kvcrush)")
    run.add_argument("--base", default="snapkv", choices=list(BASE_CHOICES), help="KVCrush's importance policy")
    run.add_argument("--budget", default="0.25", help="tokens kept per KV head: 0.25, 25%% or 512 (default 0.25)")
    run.add_argument("--crush-fraction", type=float, default=0.25, help="share of the budget for representatives")
    run.add_argument("--anchor", default="alternating", choices=list(ANCHOR_MODES))
    run.add_argument("--signature-heads", default="query", choices=["query", "kv"])
    run.add_argument("--granularity", default="token", choices=["token", "block"])
    run.add_argument("--block-size", type=int, default=16)
    run.add_argument("--window", type=int, help="observation window of snapkv/pyramidkv (default 32)")
    run.add_argument("--sink", type=int, help="first tokens always kept")
    run.add_argument("--recent", type=int, help="last tokens always kept")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--max-new-tokens", type=int, default=64)
    run.add_argument("--model", help="HF id, local folder or random:SHAPE (default: packaged SmolLM2-135M-Instruct)")
    run.add_argument("--device", default="auto")
    run.add_argument("--dtype", default="auto")
    run.add_argument("--no-chat-template", action="store_true", help="feed the raw text without the chat template")
    run.add_argument("--json", action="store_true", help="print the result (with the full trace) as JSON")
    return parser


def policy_options(args: argparse.Namespace) -> dict:
    options = {"sink": args.sink, "recent": args.recent, "seed": args.seed}
    if args.policy in ("snapkv", "pyramidkv") or (args.policy == "kvcrush" and args.base in ("snapkv", "pyramidkv")):
        options["window"] = args.window
    if args.policy == "kvcrush":
        options.update(base=args.base, crush_fraction=args.crush_fraction, anchor=args.anchor,
                       signature_heads=args.signature_heads, granularity=args.granularity,
                       block_size=args.block_size)
    return options


def _table(result, load_s: float) -> str:
    t = result.timings
    rows = [
        ("load model", f"{load_s:.2f} s"),
        ("context / question tokens", f"{result.trace.n_context} / {result.trace.n_question}"),
        ("KV bytes before", f"{result.kv_bytes_before:,}"),
        ("KV bytes after", f"{result.kv_bytes_after:,} ({100 * result.compression:.1f}%)"),
        ("prefill", f"{t.prefill_s:.3f} s"),
        ("select (score + choose)", f"{t.select_s:.3f} s (scoring {t.score_s:.3f} s, KVCrush {t.crush_s:.4f} s)"),
        ("decode", f"{t.decode_s:.3f} s for {t.decode_tokens} tokens"),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name.ljust(width)}  {value}" for name, value in rows)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from kvcrush.generate import generate
    from kvcrush.models import load_model

    try:
        prompt = read_text_file(args.prompt_file) if args.prompt_file else args.prompt
        policy = make_policy(args.policy, budget=args.budget, **policy_options(args))
        print(f"Loading {args.model or 'the packaged SmolLM2-135M-Instruct'} ...", file=sys.stderr)
        lm = load_model(args.model, device=args.device, dtype=args.dtype)
        result = generate(lm, prompt, policy, max_new_tokens=args.max_new_tokens, question=args.question,
                          query_aware=args.query_aware, chat_template=False if args.no_chat_template else None)
    except KVCrushError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({**result.to_dict(), "load_s": lm.load_s}))
    else:
        print(result.text.strip())
        print()
        print(_table(result, lm.load_s))
    return 0
