"""Reading what an AppTest run rendered: Plotly specs, st.html bodies, errors."""

from __future__ import annotations

import base64
import json
import re

import numpy as np


def decode_array(value):
    """Plotly 6 stores arrays as {'dtype', 'bdata', 'shape'}; return a numpy array either way."""
    if isinstance(value, dict) and "bdata" in value:
        array = np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"]))
        if "shape" in value:
            shape = [int(s) for s in str(value["shape"]).split(",")]
            array = array.reshape(shape)
        return array
    return np.asarray(value, dtype=object)


def chart(at, key: str) -> dict:
    """The Plotly spec of the chart rendered with `key`."""
    for element in at.get("plotly_chart"):
        if element.proto.id.endswith(f"-{key}"):
            return json.loads(element.proto.spec)
    raise AssertionError(f"no chart with key {key!r}; have {[e.proto.id for e in at.get('plotly_chart')]}")


def html_bodies(at) -> list[str]:
    return [element.value for element in at.get("html")]


def no_errors(at) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def legend_counts(at) -> dict[str, int]:
    """Tokens per status in the current layer/head, read from the rendered legend."""
    legend = next(body for body in html_bodies(at) if 'class="kv-legend"' in body)
    return {name: int(count.replace(",", ""))
            for name, count in re.findall(r'kv-legend-(\w+)".*?</span> \(([\d,]+)\)', legend)}


def token_view(at) -> str:
    return next(body for body in html_bodies(at) if 'class="kv-tokens"' in body)


def metric(at, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)
