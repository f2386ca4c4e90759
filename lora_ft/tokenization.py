"""Samples to tokens and labels, with the chat template, training on the answers only.

A conversation is rendered with the run's chat template. For each assistant turn, the characters from the start of
its content through its end-of-turn marker (``<|im_end|>``, ``<|eot_id|>``, EOS...) are the trained span; every
other character is context. The rendered text is tokenized once and a token carries a label when it starts inside
a trained span. So the model learns each answer and the token that ends it -- the token that makes generation
stop -- and never learns to write the user's turns or the template's markup.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lora_ft.data import Sample
from lora_ft.errors import UserError

IGNORE = -100


@dataclass
class TokenizedSet:
    input_ids: list[list[int]] = field(default_factory=list)
    labels: list[list[int]] = field(default_factory=list)
    locations: list[str] = field(default_factory=list)
    truncated: int = 0
    truncated_trained_tokens: int = 0
    dropped_no_label: list[str] = field(default_factory=list)

    @property
    def tokens(self) -> int:
        return sum(len(x) for x in self.input_ids)

    @property
    def trained_tokens(self) -> int:
        return sum(sum(1 for t in y if t != IGNORE) for y in self.labels)


class ChatRenderer:
    """Renders conversations with one chat template and marks the trained character spans."""

    def __init__(self, tokenizer, template: str) -> None:
        if not getattr(tokenizer, "is_fast", False):
            raise UserError("lora-ft needs a fast (Rust) tokenizer to align labels with the chat template",
                            fix="use a model whose tokenizer has a tokenizer.json")
        self.tokenizer = tokenizer
        self.template = template
        self.end_of_turn = self._find_end_of_turn()

    def render(self, messages: list[dict[str, str]], add_generation_prompt: bool = False) -> str:
        return self.tokenizer.apply_chat_template(
            messages, chat_template=self.template, tokenize=False, add_generation_prompt=add_generation_prompt
        )

    def trained_spans(self, messages: list[dict[str, str]]) -> tuple[str, list[tuple[int, int]]]:
        """The full rendered text and, for each assistant turn, the (start, end) characters to train on."""
        full = self.render(messages)
        spans = []
        for index, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            before = self.render(messages[:index], add_generation_prompt=True)
            upto = self.render(messages[: index + 1])
            if not (upto.startswith(before) and full.startswith(upto)):
                raise UserError(
                    "the chat template renders a conversation differently from its beginning, so the answers "
                    "cannot be located for the loss mask",
                    fix="set model.chat_template to one of the shipped templates (chatml, llama3, alpaca)",
                )
            spans.append((len(before), len(upto.rstrip())))
        return full, spans

    def _find_end_of_turn(self) -> str:
        """The text that closes an answer in this template (must be a single special token to learn to stop)."""
        probe = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there"}]
        text = self.render(probe)
        tail = text[text.rindex("Hello there") + len("Hello there"):].rstrip()
        return tail

    def end_of_turn_token_id(self) -> int | None:
        """The id of the end-of-turn token, or None when the template closes answers with no single token."""
        if not self.end_of_turn:
            return None
        ids = self.tokenizer(self.end_of_turn, add_special_tokens=False)["input_ids"]
        return ids[-1] if len(ids) == 1 else None


def tokenize_samples(
    samples: list[Sample], renderer: ChatRenderer, max_length: int, train_on: str
) -> TokenizedSet:
    """Tokenize samples; truncate to ``max_length``; drop samples that keep no trained token."""
    tokenizer = renderer.tokenizer
    out = TokenizedSet()
    for sample in samples:
        if sample.messages is not None:
            text, spans = renderer.trained_spans(sample.messages)
            encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
            ids = encoded["input_ids"]
            if train_on == "all":
                labels = list(ids)
            else:
                labels = [
                    token if any(start <= begin < end for start, end in spans) else IGNORE
                    for token, (begin, _) in zip(ids, encoded["offset_mapping"])
                ]
        else:
            ids = tokenizer(sample.text, add_special_tokens=True)["input_ids"]
            if tokenizer.eos_token_id is not None and (not ids or ids[-1] != tokenizer.eos_token_id):
                ids = ids + [tokenizer.eos_token_id]
            labels = list(ids)
        if len(ids) > max_length:
            out.truncated += 1
            out.truncated_trained_tokens += sum(1 for t in labels[max_length:] if t != IGNORE)
            ids, labels = ids[:max_length], labels[:max_length]
        if all(t == IGNORE for t in labels):
            out.dropped_no_label.append(sample.location)
            continue
        out.input_ids.append(ids)
        out.labels.append(labels)
        out.locations.append(sample.location)
    return out


def check_end_of_turn_trained(renderer: ChatRenderer, train_on: str) -> None:
    """Refuse a template whose answers do not end with a trained end-of-turn token: the model would never stop."""
    if renderer.end_of_turn_token_id() is None:
        raise UserError(
            "the chat template does not end answers with a single end-of-turn token "
            f"(found {renderer.end_of_turn!r} after an answer), so the model would never learn to stop",
            fix="use model.chat_template: chatml, llama3 or alpaca (which end answers with EOS)",
        )
    probe = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there"}]
    tokenized = tokenize_samples([Sample("template check", messages=probe)], renderer, 10_000, train_on)
    ids, labels = tokenized.input_ids[0], tokenized.labels[0]
    eot = renderer.end_of_turn_token_id()
    closing = max(i for i, token in enumerate(ids) if token == eot)  # the answer is the last turn of the probe
    if labels[closing] == IGNORE:
        raise UserError("the end-of-turn token of an answer is not trained by this template",
                        fix="use model.chat_template: chatml, llama3 or alpaca")
