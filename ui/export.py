"""Downloads: the current trace as JSON, tables as CSV (generated only when clicked)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable

import pandas as pd
import streamlit as st

from kvcrush.trace import GenerationResult, RunTrace, to_jsonable


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower() or "run"


def trace_json_button(latest: Callable[[], GenerationResult | RunTrace], name: str, key: str) -> None:
    """`latest()` is asked when the button is clicked: the finished run by then, or only its selection."""
    st.download_button(
        "Download trace (JSON)", data=lambda: json.dumps(to_jsonable(latest())),
        file_name=f"kvcrush-trace-{slug(name)}.json", mime="application/json", key=key, on_click="ignore",
        help="The whole run: generated text, bytes, timings and every layer's decisions.",
    )


def csv_button(frame: pd.DataFrame, name: str, key: str, label: str = "Download table (CSV)") -> None:
    st.download_button(label, data=lambda: frame.to_csv(index=False), file_name=f"{slug(name)}.csv",
                       mime="text/csv", key=key, on_click="ignore")


def json_button(data: Callable[[], str], name: str, key: str, label: str = "Download (JSON)") -> None:
    """A JSON download whose text `data()` is made only when clicked."""
    st.download_button(label, data=data, file_name=f"{slug(name)}.json", mime="application/json", key=key,
                       on_click="ignore")
