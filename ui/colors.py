"""One colour-blind-safe palette (Okabe and Ito, 2008) for every page: statuses and policies."""

from __future__ import annotations

import re

import kvcrush
from kvcrush.policies import KVPRESS_POLICY
from kvcrush.policies.press import KVPressPolicy
from kvcrush.trace import EVICTED, IMPORTANT, PROTECTED, RECENT, REPRESENTATIVE, SINK, STATUS_NAMES

OKABE_ITO = {
    "black": "#000000",
    "orange": "#E69F00",
    "sky_blue": "#56B4E9",
    "bluish_green": "#009E73",
    "yellow": "#F0E442",
    "blue": "#0072B2",
    "vermillion": "#D55E00",
    "reddish_purple": "#CC79A7",
    "grey": "#999999",
}

# Status code -> colour. Evicted is a light neutral so kept tokens stand out.
STATUS_COLORS: dict[int, str] = {
    EVICTED: "#DDDDDD",
    SINK: OKABE_ITO["reddish_purple"],
    RECENT: OKABE_ITO["sky_blue"],
    IMPORTANT: OKABE_ITO["bluish_green"],
    REPRESENTATIVE: OKABE_ITO["orange"],
    PROTECTED: OKABE_ITO["yellow"],
}
# A display-only status (never in a trace): a prompt token kept at compression and evicted later, while
# the answer was decoded (decode-time eviction, `kvcrush.explain.decode_cache`).
DECODE_EVICTED = 99
STATUS_COLORS[DECODE_EVICTED] = "#F5CDB6"  # light vermillion: evicted, but later than the grey ones
STATUS_TEXT_COLORS: dict[int, str] = {EVICTED: "#6b6b6b", DECODE_EVICTED: "#8a3d00"}
STATUS_LABELS: dict[int, str] = {**dict(enumerate(STATUS_NAMES)), DECODE_EVICTED: "evicted while decoding"}
STATUS_SHORT: dict[int, str] = {
    EVICTED: "evicted", SINK: "sink", RECENT: "recent", IMPORTANT: "kept", REPRESENTATIVE: "representative",
    PROTECTED: "question", DECODE_EVICTED: "decode_evicted",
}
# The statuses the token view can show, in legend order ("question": query-aware, the question's own
# tokens are under the budget as the observation window and always kept).
SHOWN_STATUSES = (IMPORTANT, REPRESENTATIVE, SINK, RECENT, PROTECTED, EVICTED, DECODE_EVICTED)

# Each policy declares its colour (`Policy.color`): a new policy needs no edit here.
POLICY_COLORS: dict[str, str] = {name: cls.color for name, cls in kvcrush.POLICIES.items()}
# Categorical sequence for things without a fixed meaning (buckets, pairs of policies).
SEQUENCE = [OKABE_ITO[k] for k in ("blue", "orange", "bluish_green", "vermillion", "reddish_purple",
                                   "sky_blue", "black", "grey")]
CONTINUOUS_SCALE = "Cividis"  # perceptually uniform and colour-blind safe


def policy_color(name: str) -> str:
    """Colour of a policy by its name (a label like 'kvcrush (snapkv)' or 'kvcrush-h2o' uses its first word)."""
    words = re.split(r"[^a-z0-9_]+", str(name).lower())
    word = words[0] if words else ""
    cls = KVPressPolicy if word == KVPRESS_POLICY else kvcrush.POLICIES.get(word)  # at call time: added ones too
    return cls.color if cls is not None else OKABE_ITO["grey"]


def status_colorscale(codes: tuple[int, ...] = tuple(range(len(STATUS_NAMES)))) -> list[list]:
    """A stepped Plotly colourscale so a heatmap of status codes (zmin=-0.5, zmax=n-0.5) is discrete."""
    n = len(codes)
    scale: list[list] = []
    for i, code in enumerate(codes):
        scale.append([i / n, STATUS_COLORS[code]])
        scale.append([(i + 1) / n, STATUS_COLORS[code]])
    return scale


def bucket_color(index: int) -> str:
    return SEQUENCE[index % len(SEQUENCE)]
