"""Command line (`kvcrush` once the package is installed, or `python -m kvcrush`):

  kvcrush generate --policy kvcrush --base snapkv --budget 0.25 --prompt-file F   compress a prompt and answer
  kvcrush generate --policy kvpress --press ExpectedAttentionPress --prompt-file F  a kvpress scorer press as policy
  kvcrush generate --policy kvcrush --base kvpress --press ExpectedAttentionPress ...  KVCrush over a kvpress press
  kvcrush app [streamlit options]                  start the explorer (e.g. --server.port 8502)
  kvcrush bench [benchmark options]                run the benchmark (kvcrush bench --help)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from kvcrush.errors import KVCrushError, PolicyError
from kvcrush.policies import KVCRUSH_BASES, KVPRESS_POLICY, POLICIES, make_policy
from kvcrush.policies.options import OptionSpec, declared_options
from kvcrush.textio import read_text_file


def option_specs() -> dict[str, OptionSpec]:
    """Every option any policy declares, by name (the first declaration's help, the union of choices)."""
    specs: dict[str, OptionSpec] = {}
    for cls in POLICIES.values():
        for spec in declared_options(cls):
            seen = specs.get(spec.name)
            if seen is None:
                specs[spec.name] = spec
            elif seen.choices and spec.choices:
                merged = tuple(dict.fromkeys(seen.choices + spec.choices))
                specs[spec.name] = dataclasses.replace(seen, choices=merged)
    return specs


def _owners(name: str) -> str:
    return ", ".join(cls.name for cls in POLICIES.values() if any(s.name == name for s in declared_options(cls)))


# Commands whose arguments go, untouched, to another program (kvcrush.launcher): streamlit and benchmarks.run.
PASS_THROUGH = {
    "app": "start the explorer: `streamlit run <explorer>/app.py [streamlit options]` (kvcrush app --help)",
    "bench": "run the benchmark: `python -m benchmarks.run [options]` (kvcrush bench --help)",
}


def build_parser(prog: str = "kvcrush") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="{generate,app,bench}")
    run = commands.add_parser("generate", help="compress a prompt's KV cache and generate an answer")
    source = run.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt-file", help="UTF-8 text file with the context")
    source.add_argument("--prompt", help="the context as a string")
    run.add_argument("--question", help="question appended after the (compressed) context")
    run.add_argument("--query-aware", action="store_true", help="use the question as the observation window")
    run.add_argument("--policy", default="kvcrush", choices=[*POLICIES, KVPRESS_POLICY],
                     help="; ".join([*(f"{name}: {cls.help}" for name, cls in POLICIES.items()),
                                     f"{KVPRESS_POLICY}: a kvpress ScorerPress's scores (--press; needs kvpress)"]))
    run.add_argument("--base", default="snapkv", choices=list(KVCRUSH_BASES),
                     help="KVCrush's importance policy (kvpress: a kvpress press's scores, named by --press)")
    if "press" not in option_specs():
        run.add_argument("--press", default=None,
                         help="kvpress ScorerPress for --policy kvpress (or --policy kvcrush --base kvpress): a class "
                              "name such as ExpectedAttentionPress, snapkv or CriticalKVPress(SnapKVPress) "
                              "(kvcrush.policies.press.press_table() lists which run)")
    run.add_argument("--budget", default="0.25", help="tokens kept per KV head: 0.25, 25%% or 512 (default 0.25)")
    policy_flags = run.add_argument_group("policy options (default: the policy's own; each applies to the "
                                          "policies named after it)")
    for spec in option_specs().values():
        policy_flags.add_argument(spec.flag, dest=spec.name, type=spec.kind, choices=spec.choices, default=None,
                                  help=f"{spec.help.replace('%', '%%')} [{_owners(spec.name)}]")
    run.add_argument("--max-new-tokens", type=int, default=64)
    run.add_argument("--model", help="HF id, local folder or random:SHAPE (default: packaged SmolLM2-135M-Instruct)")
    run.add_argument("--device", default="auto")
    run.add_argument("--dtype", default="auto")
    run.add_argument("--no-chat-template", action="store_true", help="feed the raw text without the chat template")
    run.add_argument("--json", action="store_true", help="print the result (with the full trace) as JSON")
    for name, text in PASS_THROUGH.items():  # listed for --help; `main` hands their arguments over before parsing
        commands.add_parser(name, help=text, add_help=False)
    return parser


def policy_options(args: argparse.Namespace) -> dict:
    """The declared options the user set (None = the policy's default); `make_policy` rejects foreign ones."""
    options = {name: getattr(args, name) for name in option_specs() if getattr(args, name, None) is not None}
    if args.policy == "kvcrush":
        options["base"] = args.base
    press = getattr(args, "press", None)
    if args.policy == KVPRESS_POLICY or options.get("base") == KVPRESS_POLICY:
        options["press"] = press  # None: make_policy says a press is needed
    elif press is not None:
        raise PolicyError(f"--press applies to --policy {KVPRESS_POLICY} only (or --policy kvcrush --base "
                          f"{KVPRESS_POLICY}), not {args.policy}" + (f" over {args.base}." if args.policy == "kvcrush"
                                                                      else "."))
    return options


def _table(result, load_s: float) -> str:
    t = result.timings
    rows = [
        ("load model", f"{load_s:.2f} s"),
        ("context / question tokens", f"{result.trace.n_context} / {result.trace.n_question}"),
        ("KV bytes before", f"{result.kv_bytes_before:,}"),
        ("KV bytes after", f"{result.kv_bytes_after:,} ({100 * result.compression:.1f}%)"),
        ("prefill", f"{t.prefill_s:.3f} s"),
        ("score", f"{t.score_s:.3f} s"),
        ("select", f"{t.select_s:.3f} s (KVCrush {t.crush_s:.4f} s of it)"),
        ("decode", f"{t.decode_s:.3f} s for {t.decode_tokens} tokens"),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name.ljust(width)}  {value}" for name, value in rows)


def main(argv: list[str] | None = None, prog: str = "kvcrush") -> int:
    """The `kvcrush` console script (`python -m kvcrush` passes its own `prog`); returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] and argv[0] in PASS_THROUGH:
        from kvcrush import launcher

        return launcher.app(argv[1:], prog=f"{prog} app") if argv[0] == "app" else launcher.bench(argv[1:])
    args = build_parser(prog).parse_args(argv)
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
