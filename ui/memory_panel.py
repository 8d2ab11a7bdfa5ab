"""Project a budget's KV saving onto a larger model and context (`kvcrush.memory.project`)."""

from __future__ import annotations

import streamlit as st

from kvcrush.memory import DTYPE_BYTES, PRESET_SHAPES, KVShape, project
from kvcrush.quant import KV_BITS
from kvcrush.sizes import format_bytes
from ui import plots

CUSTOM = "Custom"
DEFAULT_PRESET = "Llama-3-8B"
DEFAULT_TOKENS = 32_768


def _apply_preset() -> None:
    shape = PRESET_SHAPES.get(st.session_state.get("mem_preset", DEFAULT_PRESET))
    if shape is None:
        return
    st.session_state["mem_layers"] = shape.layers
    st.session_state["mem_kv_heads"] = shape.kv_heads
    st.session_state["mem_head_dim"] = shape.head_dim
    st.session_state["mem_dtype"] = shape.dtype


def budget_fraction(budget: float | int, n_context: int) -> float:
    """The sidebar's budget as a share of the prompt (token budgets relative to this prompt)."""
    if isinstance(budget, int):
        return min(1.0, budget / max(n_context, 1))
    return float(budget)


def render(fraction: float, budget_label: str, kv_bits: int = 16) -> None:
    """The projection at the sidebar's budget; `kv_bits`: the sidebar policy's storage precision (the default
    of the panel's own "Stored bits" choice)."""
    presets = list(PRESET_SHAPES) + [CUSTOM]
    if "mem_layers" not in st.session_state:
        st.session_state.setdefault("mem_preset", DEFAULT_PRESET)
        _apply_preset()
    with st.container(key="memory_panel", border=True):
        st.markdown(f"**Memory projection** at the sidebar's budget ({budget_label}, keeps {fraction:.1%} of "
                    "the context per head)")
        top = st.columns([2, 1, 1, 1, 1.3, 1.5, 1, 1.2])
        top[0].selectbox("Model shape", presets, key="mem_preset", on_change=_apply_preset)
        layers = int(top[1].number_input("Layers", 1, 512, key="mem_layers"))
        kv_heads = int(top[2].number_input("KV heads", 1, 512, key="mem_kv_heads"))
        head_dim = int(top[3].number_input("Head dim", 1, 1024, key="mem_head_dim"))
        dtype = top[4].selectbox("dtype", list(DTYPE_BYTES), key="mem_dtype")
        tokens = int(top[5].number_input("Context tokens", 1, 10_000_000, DEFAULT_TOKENS, step=1024,
                                         key="mem_tokens"))
        batch = int(top[6].number_input("Batch", 1, 4096, 1, key="mem_batch"))
        bits = int(top[7].selectbox("Stored bits", KV_BITS, index=KV_BITS.index(kv_bits), key=f"mem_bits_{kv_bits}",
                                    help="Precision of the kept tokens (kv_bits): 16 stores them in the dtype; "
                                         "8/4/2 as integer codes with a float16 scale and zero per 64 values, "
                                         "the newest 8 tokens of each layer in the dtype."))
        shape = KVShape(layers, kv_heads, head_dim, dtype)
        projection = project(shape, tokens, fraction, batch, bits)
        cols = st.columns(4)
        cols[0].metric("Full KV cache", format_bytes(projection.full_bytes))
        cols[1].metric("Compressed", format_bytes(projection.compressed_bytes))
        cols[2].metric("Saved", format_bytes(projection.saved_bytes))
        cols[3].metric("Projected reduction", f"{projection.ratio:.2f}x")
        st.caption(f"{format_bytes(shape.bytes_per_token() * batch)} per token "
                   f"(2 × {layers} layers × {kv_heads} KV heads × {head_dim} × {DTYPE_BYTES[dtype]} bytes"
                   f"{f' × batch {batch}' if batch > 1 else ''}); "
                   f"{projection.kept_tokens:,} of {tokens:,} tokens kept"
                   + (f", stored at {bits} bits ({format_bytes(shape.stored_bytes_per_token(bits) * batch)} per token)."
                      if bits < 16 else "."))
        grid = sorted({2**k for k in range(10, 18)} | {tokens})
        full = [project(shape, t, fraction, batch, bits).full_bytes for t in grid]
        compressed = [project(shape, t, fraction, batch, bits).compressed_bytes for t in grid]
        st.plotly_chart(plots.memory_curve(grid, full, compressed, tokens, f"budget {budget_label}"),
                        key="mem_curve")
