"""Word-level diff of a generated text against the full cache's text, as escaped HTML."""

from __future__ import annotations

import difflib
import html
import re

from ui.colors import OKABE_ITO

_WORDS = re.compile(r"\s+|[^\s]+")
INSERT_STYLE = ("background:#d6eaf8;color:#003b66;text-decoration:underline;"
                f"text-decoration-color:{OKABE_ITO['blue']};")
DELETE_STYLE = ("background:#fbe3d5;color:#7a2e00;text-decoration:line-through;"
                f"text-decoration-color:{OKABE_ITO['vermillion']};")


def words(text: str) -> list[str]:
    return _WORDS.findall(text)


def similarity(text: str, reference: str) -> float:
    """Share of matching words (difflib's ratio over word sequences)."""
    return difflib.SequenceMatcher(a=words(reference), b=words(text), autojunk=False).ratio()


def diff_html(text: str, reference: str) -> str:
    """`text` with words missing from `reference` underlined (blue) and reference words it lacks struck out."""
    a, b = words(reference), words(text)
    out = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes():
        if op == "equal":
            out.append(html.escape("".join(b[j1:j2])))
            continue
        if i2 > i1:
            out.append(f'<del class="kv-del" style="{DELETE_STYLE}">{html.escape("".join(a[i1:i2]))}</del>')
        if j2 > j1:
            out.append(f'<ins class="kv-ins" style="{INSERT_STYLE}">{html.escape("".join(b[j1:j2]))}</ins>')
    body = "".join(out) if (text + reference).strip() else "<em>(only whitespace)</em>"
    return f'<div class="kv-diff" style="white-space:pre-wrap;font-size:0.9rem;line-height:1.5;">{body}</div>'
