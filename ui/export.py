"""Downloads: the current trace as compressed arrays (.npz) and, while small, as JSON; tables as CSV (each file
generated only when clicked)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable

import pandas as pd
import streamlit as st

from kvcrush.sizes import format_bytes
from kvcrush.trace import GenerationResult, RunTrace, to_jsonable
from kvcrush.trace_export import to_npz

# Beyond this many bytes of trace tensors the JSON text (every number spelled out) takes seconds to build and
# runs to hundreds of MB: only the .npz file is offered.
JSON_TRACE_LIMIT = 16 * 2**20


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower() or "run"


def trace_json_button(latest: Callable[[], GenerationResult | RunTrace], name: str, key: str) -> None:
    """The trace downloads: `.npz` always, JSON while the trace holds at most `JSON_TRACE_LIMIT` bytes. `latest()` is
    asked when a button is clicked: the finished run by then, or only its selection."""
    current = latest()
    trace = current.trace if isinstance(current, GenerationResult) else current
    st.download_button(
        "Download trace (.npz)", data=lambda: to_npz(latest()), file_name=f"kvcrush-trace-{slug(name)}.npz",
        mime="application/octet-stream", key=f"{key}_npz", on_click="ignore",
        help="The whole run as compressed NumPy arrays (kvcrush.trace_export.read_npz reads it back): every layer's "
             "decisions, scores and signatures, generated text, bytes and timings.",
    )
    if trace.nbytes <= JSON_TRACE_LIMIT:
        st.download_button(
            "Download trace (JSON)", data=lambda: json.dumps(to_jsonable(latest())),
            file_name=f"kvcrush-trace-{slug(name)}.json", mime="application/json", key=key, on_click="ignore",
            help="The whole run: generated text, bytes, timings and every layer's decisions.",
        )
    else:
        st.caption(f"JSON export is offered up to {format_bytes(JSON_TRACE_LIMIT)} of trace tensors; this trace holds "
                   f"{format_bytes(trace.nbytes)}: use the .npz file.")


def csv_button(frame: pd.DataFrame, name: str, key: str, label: str = "Download table (CSV)") -> None:
    st.download_button(label, data=lambda: frame.to_csv(index=False), file_name=f"{slug(name)}.csv",
                       mime="text/csv", key=key, on_click="ignore")


def json_button(data: Callable[[], str], name: str, key: str, label: str = "Download (JSON)") -> None:
    """A JSON download whose text `data()` is made only when clicked."""
    st.download_button(label, data=data, file_name=f"{slug(name)}.json", mime="application/json", key=key,
                       on_click="ignore")
