"""Attention: what the answer used. Each generated token's attention to the compressed cache, split by why a
row is there (sink, recent, kept by importance, KVCrush representative, question, the answer so far).

Recorded while decoding only when the sidebar's "Record what the answer attends to" is on
(`kvcrush.attention_use`); the page renders the finished run's record.
"""

from __future__ import annotations

import streamlit as st

from ui import attention_view, page

opened = page.single_run("Attention")
if not opened.live.request.record_attention:
    st.info("Turn on **Record what the answer attends to** in the sidebar's Run section: the answer is decoded "
            "again with each generated token's attention recorded (one query per layer and step).")
record = opened.finish()
if record is None or record.attention is None:
    st.stop()
tokenizer = opened.lm.tokenizer
generated = [tokenizer.decode([i]) for i in record.result.new_token_ids]
attention_view.render(record.attention, record.result.trace, generated)
