"""Benchmark tasks: each turns packaged data into `Item`s (token ids plus gold) and scores outputs.

- `needle`, `multikey`, `multivalue`: RULER-style retrieval in Paul Graham essay filler, scored by
  teacher forcing the gold answer after an answer prefix (`retrieval`): hit and gold-answer NLL.
- `likelihood`: mean NLL of the true next tokens of an essay under the compressed cache.
- `agreement`: SQuAD / HotpotQA questions; F1 and exact match against the full cache's answer and gold,
  and the gold answer's NLL.

Every task module has `NAME`, `PRIMARY` (the metric that becomes the CSV's `score`),
`HIGHER_IS_BETTER`, `build(tokenizer, settings) -> list[Item]` and
`score(item, outcome, full) -> dict[str, float]` (`full` is the uncompressed run on the same item).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kvcrush.prompts import EncodedPrompt


@dataclass
class Item:
    """One prompt, identical for both engines.

    length: the target context length in tokens (0 where the data sets it, e.g. SQuAD);
    reference_ids: a continuation (likelihood) or gold answer to score under teacher forcing; with
    `max_new_tokens` > 0 the run also decodes an answer (stopping at a line break with `stop_at_newline`).
    """

    task: str
    dataset: str
    length: int
    sample: str
    encoded: EncodedPrompt
    answers: tuple[str, ...] = ()
    reference_ids: list[int] | None = None
    max_new_tokens: int = 32
    stop_at_newline: bool = False
    meta: dict[str, Any] = field(default_factory=dict)


__all__ = ["Item"]
