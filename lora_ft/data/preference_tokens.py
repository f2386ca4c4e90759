"""Preference samples to tokens: the prompt, and each answer through its end-of-turn token.

A pair is rendered with the run's chat template exactly as an SFT conversation is (:mod:`lora_ft.data.tokenization`):
the prompt is everything up to the assistant's generation prompt, an answer runs from there through its
end-of-turn token (the token that makes generation stop), so the policy is scored on the text it would write.
Tokenizing here, not in TRL, means one tokenization for training, ``lora-ft data``, ``plan`` and the resume check.

Lengths: ``max_prompt_length`` keeps a long prompt's last tokens; a pair longer than ``data.max_seq_length`` is
truncated (the answers' ends cut), dropped or refused, as ``data.overlength`` says. A pair whose two answers are
cut before they differ carries no preference and is dropped, and named.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from lora_ft.data.length_policy import DEFAULT_OVERLENGTH, LengthPolicy, Overlength
from lora_ft.data.tokenization import IGNORE, ChatRenderer, encode_conversation, encodings, first_token_from
from lora_ft.samples import Sample


@dataclass
class PreferenceTokens:
    """Tokenized preference samples. A pair has both answers; an unpaired (KTO) row has one, the other None."""

    prompt_ids: list[list[int]] = field(default_factory=list)
    chosen_ids: list[list[int] | None] = field(default_factory=list)
    rejected_ids: list[list[int] | None] = field(default_factory=list)
    locations: list[str] = field(default_factory=list)
    truncated: int = 0  # pairs whose answers were cut at max_length
    truncated_trained_tokens: int = 0
    prompts_cut: int = 0  # prompts cut to max_prompt_length
    over_length: list[str] = field(default_factory=list)
    cut_before_difference: list[str] = field(default_factory=list)  # dropped: both answers cut before they differ
    prompt_fills_length: list[str] = field(default_factory=list)  # dropped: the prompt alone fills max_length

    def sequences(self) -> Iterable[tuple[list[int], list[int]]]:
        """Every answer with its prompt as ``(input_ids, labels)``, the prompt unlabelled: what the model reads."""
        for prompt, *answers in zip(self.prompt_ids, self.chosen_ids, self.rejected_ids):
            for answer in answers:
                if answer is not None:
                    yield prompt + answer, [IGNORE] * len(prompt) + answer

    def side(self, name: str, pairs_only: bool = False) -> tuple[list[list[int]], list[list[int]]]:
        """``(input_ids, labels)`` of every ``chosen`` or ``rejected`` answer with its prompt, the prompt unlabelled;
        ``pairs_only``: of the rows that have both answers."""
        rows = [(p, c if name == "chosen" else r) for p, c, r in zip(self.prompt_ids, self.chosen_ids,
                                                                     self.rejected_ids)
                if not pairs_only or (c is not None and r is not None)]
        rows = [(p, a) for p, a in rows if a is not None]
        return [p + a for p, a in rows], [[IGNORE] * len(p) + a for p, a in rows]

    @property
    def input_ids(self) -> list[list[int]]:
        return [ids for ids, _ in self.sequences()]

    @property
    def labels(self) -> list[list[int]]:
        return [labels for _, labels in self.sequences()]

    @property
    def tokens(self) -> int:
        return sum(len(ids) for ids, _ in self.sequences())

    @property
    def trained_tokens(self) -> int:
        return sum(len(a) for side in (self.chosen_ids, self.rejected_ids) for a in side if a is not None)

    def __len__(self) -> int:
        return len(self.prompt_ids)


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def encode_answer(prompt: list[dict], answer: list[dict], renderer: ChatRenderer,
                  tools: list | None = None) -> tuple[list[int], list[int]]:
    """``(prompt_ids, answer_ids)``: the answer from the assistant's generation prompt through its end-of-turn."""
    _, ids, labels, offsets = encode_conversation(prompt + answer, renderer, "answers", tools)
    before = len(renderer.render(prompt, add_generation_prompt=True, tools=tools))
    start = sum(1 for begin, _ in offsets if begin < before)
    last = max(i for i, label in enumerate(labels) if label != IGNORE)
    return ids[:start], ids[start:last + 1]


def encode_preference(sample: Sample, renderer: ChatRenderer):
    """A sample's ``(prompt_ids, chosen_ids or None, rejected_ids or None)``, untruncated, one render and tokenizer
    call per step: the plain definition that :func:`encode_preferences` is tested against."""
    return _joined([None if turns is None else encode_answer(sample.messages, turns, renderer, sample.tools)
                    for turns in (sample.chosen, sample.rejected)])


def _joined(sides: list[tuple[list[int], list[int]] | None]):
    """``(prompt, chosen or None, rejected or None)`` from each side's ``(prompt_ids, answer_ids)``: the prompt is
    the sides' common start (the same unless tokens merged across the prompt's end), the rest goes to the answer."""
    prompts = [side[0] for side in sides if side is not None]
    keep = common_prefix(prompts[0], prompts[-1])  # the same unless tokens merged across the prompt's end
    answers = [None if side is None else side[0][keep:] + side[1] for side in sides]
    return prompts[0][:keep], answers[0], answers[1]


def encode_preferences(samples: list[Sample], renderer: ChatRenderer) -> list[tuple]:
    """Each sample's ``(location, prompt, chosen, rejected)``: its location and the tokens :func:`encode_preference`
    gives, faster: each side rendered once with its answer's character span (the prompt's generation prompt ends
    where the answer's span begins), every side of the chunk tokenized in one batch call, and the prompt's end and
    the answer's end found by a binary search of the token offsets. The compiled chat template is checked against
    the library on the first pair."""
    if samples:
        renderer.check_fast_render(samples[0].messages + (samples[0].chosen or samples[0].rejected), samples[0].tools)
    texts, marks = [], []
    for sample in samples:
        answer_turn = sum(1 for m in sample.messages if m["role"] == "assistant")  # the answer's first span
        for turns in (sample.chosen, sample.rejected):
            if turns is not None:
                text, spans = renderer.trained_spans(sample.messages + turns, sample.tools)
                texts.append(text)
                marks.append((spans[answer_turn][0], spans[-1][1]))
    encoded = iter(zip(encodings(renderer.tokenizer, texts), marks))
    out = []
    for sample in samples:
        sides = []
        for turns in (sample.chosen, sample.rejected):
            if turns is None:
                sides.append(None)
                continue
            encoding, (answer_start, answer_end) = next(encoded)
            count = len(encoding.ids)
            start = first_token_from(encoding, answer_start, count)
            sides.append((encoding.ids[:start], encoding.ids[start:first_token_from(encoding, answer_end, count)]))
        out.append((sample.location, *_joined(sides)))
    return out


def fit_preferences(encoded: Iterable[tuple[str, list[int], list[int] | None, list[int] | None]], max_length: int,
                    overlength: Overlength = DEFAULT_OVERLENGTH, max_prompt_length: int | None = None,
                    prompt_key: str | None = None) -> PreferenceTokens:
    """Apply the prompt limit and the over-length policy to ``(location, prompt, chosen, rejected)``;
    ``prompt_key``: the method's prompt-limit key (``dpo.max_prompt_length``), named in the over-length error."""
    out = PreferenceTokens()
    policy, longest = LengthPolicy(max_length, overlength), 0
    for location, prompt, chosen, rejected in encoded:
        if max_prompt_length is not None and len(prompt) > max_prompt_length:
            prompt = prompt[-max_prompt_length:]
            out.prompts_cut += 1
        answers = [a for a in (chosen, rejected) if a is not None]
        length = len(prompt) + max(len(a) for a in answers)
        if policy.is_over(length):
            out.over_length.append(location)
            longest = max(longest, length)
            if not policy.keeps(length):
                continue
            room = max_length - len(prompt)
            if room <= 0:
                out.prompt_fills_length.append(location)
                continue
            if chosen is not None and rejected is not None and chosen[:room] == rejected[:room]:
                out.cut_before_difference.append(location)
                continue
            out.truncated += 1
            out.truncated_trained_tokens += sum(max(0, len(a) - room) for a in answers)
            chosen = chosen[:room] if chosen is not None else None
            rejected = rejected[:room] if rejected is not None else None
        out.prompt_ids.append(prompt)
        out.chosen_ids.append(chosen)
        out.rejected_ids.append(rejected)
        out.locations.append(location)
    if policy.stops and out.over_length:
        raise policy.error(out.over_length, longest, prompt_key=prompt_key)
    return out
