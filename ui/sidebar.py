"""The shared sidebar: policy and budget, KVCrush options, the prompt, run options, the model.

Rendered by app.py on every rerun before the page runs, so every page sees the same `AppConfig`.
Widget keys are stable names (tests and the browser test address widgets by them).
"""

from __future__ import annotations

from dataclasses import dataclass

import streamlit as st

import kvcrush
from kvcrush.crush import ANCHOR_MODES
from kvcrush.errors import KVCrushError
from kvcrush.textio import MAX_TEXT_BYTES, decode_text
from ui import model as model_ui
from ui.state import AppConfig, ModelChoice, PolicyConfig, PromptInput, RunOptions, request_run, take_run_request

SOURCES = ("Built-in example", "Paste text", "Upload .txt")
POLICY_HELP = {
    "full": "No eviction: the reference every other policy is compared with.",
    "random": "Keeps a seeded random subset of the middle tokens.",
    "streaming": "StreamingLLM: attention sinks plus the most recent tokens.",
    "h2o": "Heavy hitters: attention each token receives from all prompt queries.",
    "snapkv": "Attention from the last prompt tokens (observation window), max-pooled.",
    "pyramidkv": "SnapKV scores with budgets shrinking from lower to upper layers.",
    "tova": "Attention from the last prompt query only.",
    "knorm": "Keeps tokens whose keys have the smallest L2 norm.",
    "kvcrush": "A base policy's top tokens plus representatives of the evicted ones, grouped by head signature.",
}


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


def policy_section(slots: SidebarSlots) -> PolicyConfig:
    names = list(kvcrush.POLICIES)
    with slots.policy:
        st.subheader("Policy")
        name = st.selectbox("Policy", names, index=names.index("kvcrush"), key="policy",
                            format_func=lambda n: n, help="\n\n".join(f"**{k}**: {v}" for k, v in POLICY_HELP.items()))
        mode = st.radio("Budget as", ["% of prompt", "tokens"], horizontal=True, key="budget_mode")
        if mode == "% of prompt":
            percent = st.slider("Budget: % of prompt tokens each KV head keeps", 1, 100, 25, key="budget_pct",
                                help="Counted including sink, recent and KVCrush tokens.")
            budget: float | int = 1.0 if percent >= 100 else percent / 100
        else:
            budget = int(st.number_input("Budget: tokens each KV head keeps", 1, 1_000_000, 256, step=16,
                                         key="budget_tokens"))
        with st.expander("KVCrush options", expanded=name == "kvcrush"):
            base = st.selectbox("Base policy", list(kvcrush.BASE_CHOICES),
                                index=list(kvcrush.BASE_CHOICES).index("snapkv"), key="base")
            crush_fraction = st.slider("Crush fraction", 0.0, 1.0, 0.25, 0.05, key="crush_fraction",
                                       help="Share of the evictable budget given to representatives.")
            anchor = st.selectbox("Anchor", list(ANCHOR_MODES), index=list(ANCHOR_MODES).index("alternating"),
                                  key="anchor")
            heads = st.radio("Signature heads", ["query", "kv"], horizontal=True, key="signature_heads")
            granularity = st.radio("Granularity", ["token", "block"], horizontal=True, key="granularity")
            block_size = int(st.number_input("Block size", 1, 256, 16, key="block_size",
                                             disabled=granularity != "block"))
            seed = int(st.number_input("Seed", 0, 2**31 - 1, 0, key="seed",
                                       help="Used by the random anchor and the random policy."))
    return PolicyConfig(name=name, budget=budget, base=base, crush_fraction=float(crush_fraction), anchor=anchor,
                        signature_heads=heads, granularity=granularity, block_size=block_size, seed=seed)


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
        query_aware = st.checkbox("Query-aware (the question is the observation window)", key="query_aware")
        auto_run = st.toggle("Run automatically when settings change", value=True, key="auto_run")
        left, right = st.columns(2)
        left.button("Run", key="run_btn", type="primary", on_click=request_run, args=("run",),
                    width="stretch")
        right.button("Run again", key="rerun_btn", on_click=request_run, args=("force",),
                     width="stretch", help="Recompute even if this configuration already ran.")
    return RunOptions(max_new_tokens=max_new, query_aware=query_aware, auto_run=auto_run)


def render(slots: SidebarSlots, choice: ModelChoice, lm: kvcrush.LoadedModel) -> AppConfig:
    show_model(slots, lm)
    policy = policy_section(slots)
    prompt, error = prompt_section(slots, lm)
    options = run_section(slots)
    return AppConfig(model=choice, policy=policy, prompt=prompt, options=options, prompt_error=error,
                     run_request=take_run_request())
