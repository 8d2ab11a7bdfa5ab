"""One colour-blind-safe palette (Okabe and Ito, 2008) for every page: statuses and policies."""

from __future__ import annotations

import re

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
STATUS_TEXT_COLORS: dict[int, str] = {EVICTED: "#6b6b6b"}
STATUS_LABELS: dict[int, str] = dict(enumerate(STATUS_NAMES))
STATUS_SHORT: dict[int, str] = {
    EVICTED: "evicted", SINK: "sink", RECENT: "recent", IMPORTANT: "kept", REPRESENTATIVE: "representative",
    PROTECTED: "question",
}
# The statuses the token view can show (the question is never part of the context tokens).
SHOWN_STATUSES = (IMPORTANT, REPRESENTATIVE, SINK, RECENT, EVICTED)

POLICY_COLORS: dict[str, str] = {
    "full": OKABE_ITO["black"],
    "kvcrush": OKABE_ITO["vermillion"],
    "snapkv": OKABE_ITO["blue"],
    "h2o": OKABE_ITO["bluish_green"],
    "pyramidkv": OKABE_ITO["sky_blue"],
    "tova": OKABE_ITO["reddish_purple"],
    "streaming": OKABE_ITO["orange"],
    "knorm": "#B8A800",  # Okabe-Ito yellow, darkened to be readable on white
    "random": OKABE_ITO["grey"],
}
# Categorical sequence for things without a fixed meaning (buckets, pairs of policies).
SEQUENCE = [OKABE_ITO[k] for k in ("blue", "orange", "bluish_green", "vermillion", "reddish_purple",
                                   "sky_blue", "black", "grey")]
CONTINUOUS_SCALE = "Cividis"  # perceptually uniform and colour-blind safe


def policy_color(name: str) -> str:
    """Colour of a policy by its name (a label like 'kvcrush (snapkv)' or 'kvcrush-h2o' uses its first word)."""
    words = re.split(r"[^a-z0-9]+", str(name).lower())
    return POLICY_COLORS.get(words[0] if words else "", OKABE_ITO["grey"])


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
