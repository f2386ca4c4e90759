"""The data report's view of preference data: prompt, chosen and rejected lengths, what the length limit cuts
(and which pairs it cuts before their answers differ), and a pair rendered with each answer."""

from __future__ import annotations

from collections.abc import Iterable
from itertools import islice

from lora_ft.config import DataSection
from lora_ft.data.length_policy import LengthPolicy
from lora_ft.data_report.splits import RenderedSample, SplitReport, render_sample
from lora_ft.data.statistics import MAX_LISTED, LengthStats, histogram
from lora_ft.data.tokenization import ChatRenderer
from lora_ft.samples import Sample


def analyse_pairs(name: str, encoded: Iterable[tuple], cfg: DataSection, max_prompt_length: int | None) -> SplitReport:
    """The same for preference data, from each pair's ``(location, prompt, chosen, rejected)`` tokens before the
    length limits (:meth:`lora_ft.preparation.Prepared.encoded_pairs`): prompt, chosen and rejected lengths; what
    the length limit cuts, and which pairs it cuts before their answers differ (those carry no preference and are
    left out). The pairs are read a chunk at a time: memory holds their lengths, not their tokens."""
    from lora_ft.data.preference_tokens import fit_preferences

    policy = LengthPolicy.of(cfg).previewed()  # a report raises nothing: error counts as truncate
    limit = policy.max_length
    prompts, chosen, rejected, totals = [], [], [], []
    over, fills, cut_before = _Listed(), _Listed(), _Listed()
    kept = tokens = trained = past = in_over = 0
    encoded = iter(encoded)
    while chunk := list(islice(encoded, CHUNK_PAIRS)):
        for _, prompt, *sides in chunk:
            answers = [len(a) for a in sides if a is not None]
            prompts.append(len(prompt))
            totals.append(len(prompt) + max(answers))
            chosen += [len(sides[0])] if sides[0] is not None else []
            rejected += [len(sides[1])] if sides[1] is not None else []
            kept_prompt = min(len(prompt), max_prompt_length) if max_prompt_length is not None else len(prompt)
            if policy.is_over(kept_prompt + max(answers)):  # over the length limit, as fit_preferences judges it
                in_over += sum(answers)
                past += sum(max(0, a - max(0, limit - kept_prompt)) for a in answers)
        fitted = fit_preferences(chunk, limit, policy.overlength, max_prompt_length)
        kept, tokens, trained = kept + len(fitted), tokens + fitted.tokens, trained + fitted.trained_tokens
        over.add(fitted.over_length)
        fills.add(fitted.prompt_fills_length)
        cut_before.add(fitted.cut_before_difference)
    return SplitReport(
        name=name, samples=len(prompts), prompt=LengthStats.of(prompts), answer=LengthStats.of(chosen),
        total=LengthStats.of(totals), histogram=histogram(totals), over_length=over.count,
        over_length_locations=over.first, trained_tokens_past_limit=past, trained_tokens_in_over_length=in_over,
        no_trained_token=fills.count, no_trained_token_locations=fills.first, kept=kept, tokens=tokens,
        trained_tokens=trained, prompt_lengths=prompts, answer_lengths=chosen,
        rejected=LengthStats.of(rejected) if rejected else None, cut_before_difference=cut_before.count,
        cut_before_difference_locations=cut_before.first)


CHUNK_PAIRS = 4096  # pairs whose tokens are in memory at a time


class _Listed:
    """A count of locations, and the first :data:`MAX_LISTED` of them."""

    def __init__(self):
        self.count, self.first = 0, []

    def add(self, locations: list[str]) -> None:
        self.count += len(locations)
        self.first += locations[:MAX_LISTED - len(self.first)]


def rendered_sides(sample: Sample, renderer: ChatRenderer, cfg: DataSection) -> list[RenderedSample]:
    """An SFT sample rendered; a preference sample as its prompt with each answer, named."""
    if not sample.is_preference:
        return [render_sample(sample, renderer, cfg)]
    shown = []
    for side in ("chosen", "rejected"):
        turns = getattr(sample, side)
        if turns is not None:
            rendered = render_sample(Sample(sample.location, messages=sample.messages + turns, tools=sample.tools),
                                     renderer, cfg)
            rendered.note = f"{side} answer" + (f"; {rendered.note}" if rendered.note else "")
            shown.append(rendered)
    return shown
