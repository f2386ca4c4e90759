"""The data report's view of preference data: prompt, chosen and rejected lengths, what the length limit cuts
(and which pairs it cuts before their answers differ), and a pair rendered with each answer."""

from __future__ import annotations

from lora_ft.config import DataSection
from lora_ft.data import Sample
from lora_ft.data.report import RenderedSample, SplitReport, render_sample
from lora_ft.data.statistics import MAX_LISTED, LengthStats, histogram
from lora_ft.tokenization import ChatRenderer


def analyse_pairs(name: str, encoded: list[tuple], cfg: DataSection, max_prompt_length: int | None) -> SplitReport:
    """The same for preference data, from each pair's ``(location, prompt, chosen, rejected)`` tokens before the
    length limits (:meth:`lora_ft.preparation.Prepared.encoded_pairs`): prompt, chosen and rejected lengths; what
    the length limit cuts, and which pairs it cuts before their answers differ (those carry no preference and are
    left out)."""
    from lora_ft.preference_tokens import fit_preferences

    limit = cfg.max_seq_length
    prompts = [len(p) for _, p, _, _ in encoded]
    chosen = [len(c) for _, _, c, _ in encoded if c is not None]
    rejected = [len(r) for _, _, _, r in encoded if r is not None]
    totals = [len(p) + max(len(a) for a in (c, r) if a is not None) for _, p, c, r in encoded]
    fitted = fit_preferences(encoded, limit, "truncate" if cfg.overlength == "error" else cfg.overlength,
                             max_prompt_length)
    over = set(fitted.over_length)
    past = sum(max(0, len(a) - max(0, limit - len(p))) for loc, p, c, r in encoded if loc in over
               for a in (c, r) if a is not None)
    in_over = sum(len(a) for loc, _, c, r in encoded if loc in over for a in (c, r) if a is not None)
    return SplitReport(
        name=name, samples=len(encoded), prompt=LengthStats.of(prompts), answer=LengthStats.of(chosen),
        total=LengthStats.of(totals), histogram=histogram(totals), over_length=len(fitted.over_length),
        over_length_locations=fitted.over_length[:MAX_LISTED], trained_tokens_past_limit=past,
        trained_tokens_in_over_length=in_over, no_trained_token=len(fitted.prompt_fills_length),
        no_trained_token_locations=fitted.prompt_fills_length[:MAX_LISTED], kept=len(fitted),
        tokens=fitted.tokens, trained_tokens=fitted.trained_tokens, prompt_lengths=prompts, answer_lengths=chosen,
        rejected=LengthStats.of(rejected) if rejected else None,
        cut_before_difference=len(fitted.cut_before_difference),
        cut_before_difference_locations=fitted.cut_before_difference[:MAX_LISTED])


def rendered_sides(sample: Sample, renderer: ChatRenderer, cfg: DataSection) -> list[RenderedSample]:
    """An SFT sample rendered; a preference sample as its prompt with each answer, named."""
    if not sample.is_preference:
        return [render_sample(sample, renderer, cfg)]
    shown = []
    for side in ("chosen", "rejected"):
        turns = getattr(sample, side)
        if turns is not None:
            rendered = render_sample(Sample(sample.location, messages=sample.messages + turns), renderer, cfg)
            rendered.note = f"{side} answer" + (f"; {rendered.note}" if rendered.note else "")
            shown.append(rendered)
    return shown
