"""One split of the data report measured (token lengths, what the length limit does) and one sample rendered as
the model sees it, trained characters marked."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from lora_ft.config import DataSection
from lora_ft.data import tokenization
from lora_ft.data.length_policy import LengthPolicy
from lora_ft.data.statistics import MAX_LISTED, Bucket, LengthStats, histogram
from lora_ft.data.tokenization import IGNORE, ChatRenderer
from lora_ft.samples import Sample
from lora_ft.tokenized import TokenizedSplit


@dataclass
class SplitReport:
    """Token lengths of one split (train or eval) and what the length limit does to it."""

    name: str
    samples: int  # samples read into this split
    prompt: LengthStats  # tokens that are not trained (the prompt and the template's markup)
    answer: LengthStats  # trained tokens (answers and their end-of-turn token)
    total: LengthStats
    histogram: list[Bucket]
    over_length: int  # samples longer than max_seq_length
    over_length_locations: list[str]  # the first MAX_LISTED of them
    trained_tokens_past_limit: int  # trained tokens after max_seq_length: what truncation loses
    trained_tokens_in_over_length: int  # every trained token of the over-length samples: what dropping loses
    no_trained_token: int  # samples left without a trained token (after truncation): left out
    no_trained_token_locations: list[str]
    kept: int  # samples that train, after the over-length policy
    tokens: int  # their tokens
    trained_tokens: int  # their trained tokens
    prompt_lengths: list[int] = field(default_factory=list, repr=False)  # per sample; for the plot, not the JSON
    answer_lengths: list[int] = field(default_factory=list, repr=False)
    # preference data: ``answer`` is the chosen answers, these the rejected ones; pairs cut before they differ
    rejected: LengthStats | None = None
    cut_before_difference: int = 0
    cut_before_difference_locations: list[str] = field(default_factory=list)


@dataclass
class RenderedSample:
    """One sample as the model sees it: the chat-template text and the character spans that are trained."""

    location: str
    text: str
    trained: list[tuple[int, int]]  # (start, end) character spans, after the over-length policy
    tokens: int
    trained_tokens: int
    cut_at: int | None = None  # character where truncation cuts, when the sample is longer than the limit
    note: str = ""


def analyse_split(name: str, split: TokenizedSplit) -> SplitReport:
    """Measure one tokenized split; the over-length policy applied as training applies it (``error`` as
    truncate). Computed from the split's columns: exact, in memory of a few bytes a sample."""
    totals, answers = split.lengths()
    prompts = totals - answers
    return SplitReport(
        name=name,
        samples=len(split),
        prompt=LengthStats.of(prompts),
        answer=LengthStats.of(answers),
        total=LengthStats.of(totals),
        histogram=histogram(totals),
        over_length=split.over_length,
        over_length_locations=split.over_length_locations(MAX_LISTED),
        trained_tokens_past_limit=split.trained_tokens_past_limit,
        trained_tokens_in_over_length=split.trained_tokens_in_over_length,
        no_trained_token=split.no_trained_token,
        no_trained_token_locations=split.no_trained_token_locations(MAX_LISTED),
        kept=split.kept,
        tokens=split.tokens,
        trained_tokens=split.trained_tokens,
        prompt_lengths=prompts,
        answer_lengths=answers,
    )


def analyse_prompts(name: str, prompts, read: int) -> SplitReport:
    """Measure an RL run's prompts (:class:`lora_ft.data.prompt_sets.PromptSet`): no answer is known before
    training samples it, so every token is a prompt's; the prompts too long to leave room for an answer are the
    over-length ones (dropped)."""
    lengths = list(prompts.lengths)
    return SplitReport(
        name=name, samples=read, prompt=LengthStats.of(lengths), answer=LengthStats.of([]),
        total=LengthStats.of(lengths), histogram=histogram(lengths), over_length=len(prompts.too_long),
        over_length_locations=prompts.too_long[:MAX_LISTED], trained_tokens_past_limit=0,
        trained_tokens_in_over_length=0, no_trained_token=0, no_trained_token_locations=[], kept=len(prompts),
        tokens=prompts.tokens, trained_tokens=0, prompt_lengths=lengths)


def render_sample(sample: Sample, renderer: ChatRenderer, cfg: DataSection) -> RenderedSample:
    """A sample's chat-template text with its trained character spans, as training would see it."""
    limit = cfg.max_seq_length
    if sample.messages is not None:
        text, ids, labels, offsets = tokenization.encode_conversation(sample.messages, renderer, cfg.train_on,
                                                                         sample.tools)
    else:  # raw text: every token is trained, special tokens included; show the tokens decoded one by one
        ids = tokenization.encode_text(sample.text or "", renderer)
        labels = list(ids)
        pieces = [renderer.tokenizer.decode([t]) for t in ids]
        ends = list(itertools.accumulate(len(p) for p in pieces))
        offsets = [(end - len(p), end) for p, end in zip(pieces, ends)]
        text = "".join(pieces)
    cut_at, note, policy = None, "", LengthPolicy.of(cfg)
    if policy.is_over(len(ids)):
        note = policy.sample_note(len(ids))
        if policy.keeps(len(ids)):
            cut_at = offsets[limit][0]
            labels = labels[:limit]
    if not any(t != IGNORE for t in labels) and policy.keeps(len(ids)):
        note = (note + "; " if note else "") + "no trained token left: left out of training"
    spans: list[tuple[int, int]] = []
    previous_trained = False
    for (begin, end), label in zip(offsets, labels):
        trained = label != IGNORE
        if trained and previous_trained:
            spans[-1] = (spans[-1][0], end)
        elif trained:
            spans.append((begin, end))
        previous_trained = trained
    return RenderedSample(location=sample.location, text=text, trained=spans, tokens=len(ids),
                          trained_tokens=sum(1 for t in labels if t != IGNORE), cut_at=cut_at, note=note)
