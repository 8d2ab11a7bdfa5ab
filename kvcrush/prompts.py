"""Turn a prompt (and optional question) into the token ids the engine compresses.

The context is what the budget applies to; the tail (the question and the chat template's closing
text) is appended uncompressed, or, query-aware, serves as the observation window and is always kept.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kvcrush.errors import PromptError


@dataclass(frozen=True)
class EncodedPrompt:
    """Token ids of one prompt, in three consecutive parts.

    context_ids: the text under the budget. question_ids: the question (with its separator), the
    observation window in query-aware mode. suffix_ids: the chat template's closing tokens (end of
    turn, assistant header), always appended after compression, uncompressed.
    """

    context_ids: list[int]
    question_ids: list[int] = field(default_factory=list)
    suffix_ids: list[int] = field(default_factory=list)

    @property
    def tail_ids(self) -> list[int]:
        """Everything after the context: question + template suffix."""
        return self.question_ids + self.suffix_ids

    @property
    def all_ids(self) -> list[int]:
        return self.context_ids + self.tail_ids

    @property
    def n_context(self) -> int:
        return len(self.context_ids)


def _has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def encode_prompt(
    tokenizer, prompt: str, question: str | None = None, chat_template: bool | None = None
) -> EncodedPrompt:
    """Tokenise `prompt` (+ `question`), with the chat template when the tokenizer has one.

    Special tokens come only from the template (`add_special_tokens=False`), so nothing is doubled.
    """
    if not isinstance(prompt, str) or not prompt.strip():
        raise PromptError("The prompt is empty: paste or upload some text to compress.")
    if question is not None and not isinstance(question, str):
        raise PromptError("The question must be text.")
    question = question.strip() if question and question.strip() else None
    use_template = _has_chat_template(tokenizer) if chat_template is None else chat_template
    if use_template and not _has_chat_template(tokenizer):
        raise PromptError("This tokenizer has no chat template; run with chat_template=False.")

    def encode(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False).input_ids if text else []

    if not use_template:
        return EncodedPrompt(encode(prompt), encode("\n\n" + question) if question else [])

    # Two markers cut the rendered template into context | question | closing tokens.
    start, end = "\x00KVCRUSH_QUESTION\x00", "\x00KVCRUSH_END\x00"
    content = prompt + ("\n\n" + start + question + end if question else start + end)
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
    )
    head, rest = rendered.split(start, 1)
    middle, closing = rest.split(end, 1)
    return EncodedPrompt(encode(head), encode(middle), encode(closing))
