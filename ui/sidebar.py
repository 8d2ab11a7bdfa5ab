"""The shared sidebar: policy and budget, the policy's declared options, the prompt, run options, the model.

Rendered by app.py on every rerun before the page runs, so every page sees the same `AppConfig`.
Widget keys are stable names (tests and the browser test address widgets by them). The policy's
options come from its own declarations (`ui.policy_options`, `ui.option_widgets`): a new policy
needs no edit here.
"""

from __future__ import annotations

from dataclasses import dataclass

import streamlit as st

import kvcrush
from kvcrush.errors import KVCrushError
from kvcrush.textio import MAX_TEXT_BYTES, decode_text
from ui import model as model_ui
from ui import option_widgets, policy_options
from ui.state import AppConfig, ModelChoice, PolicyConfig, PromptInput, RunOptions, request_run, take_run_request

SOURCES = ("Built-in example", "Paste text", "Upload .txt")
DEFAULT_POLICY = "kvcrush"


@dataclass
class SidebarSlots:
    """Containers laid out top to bottom, filled in whatever order the app needs."""

    policy: st.delta_generator.DeltaGenerator
    prompt: st.delta_generator.DeltaGenerator
    run: st.delta_generator.DeltaGenerator
    model: st.delta_generator.DeltaGenerator


def layout() -> SidebarSlots:
    with st.sidebar:
        return SidebarSlots(st.container(), st.container(), st.container(), st.container())


def model_section(slots: SidebarSlots) -> ModelChoice:
    with slots.model.expander("Model", expanded=False):
        name = st.text_input(
            "Model", value=model_ui.default_model_name(), key="model_name",
            placeholder="packaged SmolLM2-135M-Instruct",
            help="Blank for the packaged SmolLM2-135M-Instruct; or a Hugging Face id or a local folder "
                 "(Llama-like, safetensors only); `random:tiny` builds a tiny random-weight model.",
        )
        device = st.selectbox("Device", model_ui.device_options(), key="device",
                              help="auto: CUDA when a GPU is visible, else CPU.")
    return ModelChoice(name=name.strip(), device=device)


def show_model(slots: SidebarSlots, lm: kvcrush.LoadedModel) -> None:
    device = "CUDA" if lm.device.type == "cuda" else "CPU"
    slots.model.caption(f"Device: **{device}** · {lm.name} · {lm.n_layers} layers × {lm.kv_heads} KV heads")


def _policy_help() -> str:
    names = policy_options.policy_names()
    return "\n\n".join(f"**{name}**: {policy_options.policy_class(name).help}" for name in names)


def _budget() -> float | int:
    mode = st.radio("Budget as", ["% of prompt", "tokens"], horizontal=True, key="budget_mode")
    if mode == "% of prompt":
        percent = st.slider("Budget: % of prompt tokens each KV head keeps", 1, 100, model_ui.default_budget_pct(),
                            key="budget_pct",
                            help="Counted including sink, recent and KVCrush tokens.")
        return 1.0 if percent >= 100 else percent / 100
    return int(st.number_input("Budget: tokens each KV head keeps", 1, 1_000_000, 256, step=16,
                               key="budget_tokens"))


def _options(name: str) -> tuple[str | None, dict]:
    """The base policy (for a composite policy) and every declared option, one expander per declaring class.

    The first section opens by itself for a composite policy (KVCrush's own options are what the app is
    about); the others stay folded, but for one that holds a choice the user must make (the kvpress policy's press).
    """
    base = None
    values: dict = {}
    if policy_options.has_base(name):
        choices = list(policy_options.base_choices())
        default = policy_options.default_base(name)
        with st.expander(f"{name} options", expanded=True):
            base = st.selectbox("Base policy", choices, index=choices.index(default), key="base",
                                help="The policy whose scores pick the importance tokens.\n\n"
                                     + "\n\n".join(f"**{c}**: {policy_options.policy_class(c).help}"
                                                    for c in choices))
            own, *rest = policy_options.groups(name, base)
            values.update(option_widgets.render(own))
    else:
        rest = list(policy_options.groups(name))
    for group in rest:
        if group.specs:  # folded, unless it holds a choice the user must make (the kvpress policy's press)
            with st.expander(group.title, expanded=policy_options.needs_choice(group)):
                values.update(option_widgets.render(group))
    return base, values


def policy_section(slots: SidebarSlots) -> PolicyConfig:
    names = list(policy_options.policy_names())
    with slots.policy:
        st.subheader("Policy")
        name = st.selectbox("Policy", names, index=names.index(DEFAULT_POLICY), key="policy", help=_policy_help())
        budget = _budget()
        base, values = _options(name)
    return PolicyConfig(name=name, budget=budget, base=base, options=tuple(values.items())).normalized()


def _example_prompt(lm: kvcrush.LoadedModel) -> tuple[PromptInput | None, str | None]:
    examples, error = model_ui.builtin_examples(lm)
    if not examples:
        st.warning(error or "No built-in examples.")
        return None, error
    names = list(examples)
    default = model_ui.default_example()
    choice = st.selectbox("Example", names, index=names.index(default) if default in names else 0, key="example")
    example = examples[choice]
    if example.question:
        answers = ", ".join(example.answers)
        st.caption(f"**Question:** {example.question}" + (f"  \n**Answer:** {answers}" if answers else ""))
    needles = getattr(example, "needles", ())
    if len(needles) > 1:
        st.caption(f"**{len(needles)} needles**, shallowest first (type a key or a value in **Find text** on the "
                   "Tokens page to follow it):  \n" + "  \n".join(f"{i + 1}. {n}" for i, n in enumerate(needles)))
    return PromptInput("example", choice, example.context, example.question, tuple(example.answers),
                       example.kind), None


def _question(key: str) -> str | None:
    text = st.text_input("Question (optional)", key=key,
                         help="Asked after the text; it is never evicted.")
    return text.strip() or None


def _pasted_prompt() -> tuple[PromptInput | None, str | None]:
    text = st.text_area("Text to compress", key="prompt_text", height=180, max_chars=MAX_TEXT_BYTES,
                        placeholder="Paste a long text here (a few thousand tokens is fine).")
    question = _question("prompt_question")
    if not text.strip():
        return None, "Paste some text in the sidebar (or pick a built-in example)."
    size = len(text.encode("utf-8"))
    if size > MAX_TEXT_BYTES:
        return None, f"The pasted text is {size:,} bytes; the limit is {MAX_TEXT_BYTES:,} bytes of text."
    return PromptInput("text", "pasted text", text, question), None


def _uploaded_prompt() -> tuple[PromptInput | None, str | None]:
    upload = st.file_uploader("A UTF-8 .txt file", type=["txt"], key="prompt_file")
    question = _question("upload_question")
    if upload is None:
        return None, "Upload a .txt file in the sidebar (or pick a built-in example)."
    try:
        text = decode_text(upload.getvalue(), upload.name)
    except KVCrushError as error:
        return None, str(error)
    return PromptInput("upload", upload.name, text, question), None


def prompt_section(slots: SidebarSlots, lm: kvcrush.LoadedModel) -> tuple[PromptInput | None, str | None]:
    with slots.prompt:
        st.subheader("Prompt")
        source = st.radio("Input", SOURCES, key="prompt_source", horizontal=False, label_visibility="collapsed")
        if source == SOURCES[0]:
            prompt, error = _example_prompt(lm)
        elif source == SOURCES[1]:
            prompt, error = _pasted_prompt()
        else:
            prompt, error = _uploaded_prompt()
        if prompt is not None:
            try:
                n_context, n_tail = model_ui.count_tokens(lm, prompt.context, prompt.question)
            except KVCrushError as exc:
                return None, str(exc)
            st.caption(f"{n_context:,} context tokens (under the budget)"
                       + (f" + {n_tail} question/template tokens (always kept)" if n_tail else ""))
    return prompt, error


def run_section(slots: SidebarSlots) -> RunOptions:
    with slots.run:
        st.subheader("Run")
        max_new = int(st.number_input("New tokens to generate", 1, 512, model_ui.default_max_new_tokens(),
                                      key="max_new_tokens",
                                      help="Needle answers need about 32 (the model repeats the question)."))
        query_aware = st.checkbox("Query-aware (the question is the observation window)",
                                  value=model_ui.default_query_aware(), key="query_aware")
        auto_run = st.toggle("Run automatically when settings change", value=True, key="auto_run")
        record = st.toggle("Record what the answer attends to", value=False, key="record_attention",
                           help="While decoding, record each generated token's attention to the compressed cache "
                                "(sink, recent, kept, KVCrush representatives, question): the Attention page "
                                "shows it. One query per layer and step; off, decoding is untouched.")
        left, right = st.columns(2)
        left.button("Run", key="run_btn", type="primary", on_click=request_run, args=("run",),
                    width="stretch")
        right.button("Run again", key="rerun_btn", on_click=request_run, args=("force",),
                     width="stretch", help="Recompute even if this configuration already ran.")
    return RunOptions(max_new_tokens=max_new, query_aware=query_aware, auto_run=auto_run, record_attention=record)


def render(slots: SidebarSlots, choice: ModelChoice, lm: kvcrush.LoadedModel) -> AppConfig:
    show_model(slots, lm)
    policy = policy_section(slots)
    prompt, error = prompt_section(slots, lm)
    options = run_section(slots)
    return AppConfig(model=choice, policy=policy, prompt=prompt, options=options, prompt_error=error,
                     run_request=take_run_request())
