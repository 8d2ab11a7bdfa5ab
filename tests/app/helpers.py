"""Reading what an AppTest run rendered: Plotly specs, st.html bodies, errors."""

from __future__ import annotations

import base64
import json

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
