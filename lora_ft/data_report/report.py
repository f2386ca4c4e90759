"""The data report: what the data will become, before anything trains (``lora-ft data CONFIG``).

It reads the data exactly as ``lora-ft train`` does (:func:`lora_ft.preparation.prepare`) and tokenizes it with the
run's tokenizer and chat template (:mod:`lora_ft.data.tokenization`), but never loads model weights, so it takes
seconds. It says, per dataset, what was read, kept and dropped and where; per split (:mod:`.splits`, and
:mod:`.pairs` for preference data), token-length statistics and a histogram, what ``data.max_seq_length`` and
``data.overlength`` do to the long samples and which samples keep no trained token; which rows are exact duplicates
and which eval rows also appear in train; and shows samples rendered with the chat template, trained tokens marked.
The report is a dataclass, rendered as text here, as JSON or a PNG plot in :mod:`.files`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from lora_ft import console, data
from lora_ft.config import LoadedConfig
from lora_ft.data import DatasetReport, Sample, template_checks
from lora_ft.data.length_policy import LengthPolicy
from lora_ft.data.statistics import (Duplicates, Leakage, duplicate_lines, histogram_lines, length_table,
                                     listed_locations, split_duplicates, split_leakage, stats_lines)
from lora_ft.data_report.agents import AgentCounts, agent_lines, count_agent_turns, first_agent_sample
from lora_ft.data_report.pairs import analyse_pairs, rendered_sides
from lora_ft.data_report.splits import RenderedSample, SplitReport, analyse_prompts, analyse_split
from lora_ft.errors import UserError


GREEN, RED, DIM, RESET = "\x1b[1;32m", "\x1b[1;31m", "\x1b[2m", "\x1b[0m"


# ---------------------------------------------------------------------------------------------------------------
# The report


@dataclass
class DataReport:
    """Everything ``lora-ft data`` says about a config's data."""

    config: str
    tokenizer: str
    pad_token: str
    chat_template: str
    end_of_turn: str
    max_seq_length: int
    overlength: str
    train_on: str
    datasets: list[DatasetReport]
    eval_source: str
    splits: list[SplitReport]
    duplicates: list[Duplicates]
    leakage: Leakage
    samples: list[RenderedSample]
    warnings: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # what would stop `lora-ft train`
    tokenized: str = ""  # where the tokens came from: tokenized now, or the cache
    agents: AgentCounts | None = None  # tools, calls and reasoning in the train split, where it has any

    @property
    def ok(self) -> bool:
        return not self.problems

    def split(self, name: str) -> SplitReport | None:
        return next((s for s in self.splits if s.name == name), None)

    def to_dict(self) -> dict:
        """The report as plain data (per-sample length lists left out), for JSON."""
        out = dataclasses.asdict(self)
        for split in out["splits"]:
            del split["prompt_lengths"], split["answer_lengths"]
        for dataset in out["datasets"]:
            dataset["dropped_count"] = sum(len(v) for v in dataset["dropped"].values())
        for sample, rendered in zip(self.samples, out["samples"]):
            rendered["marked"] = marked_text(sample, self.max_seq_length)
        out["ok"] = self.ok
        return out


# ---------------------------------------------------------------------------------------------------------------
# Building it


def _lenient(loaded: LoadedConfig) -> LoadedConfig:
    """The same config with no limit on dropped rows, so the report can show data that training would refuse."""
    config = loaded.config.model_copy(deep=True)
    config.data.max_dropped_fraction = 1.0
    return LoadedConfig(config, loaded.path, loaded.overrides)


def _error_text(exc: UserError) -> str:
    return exc.render().removeprefix("error: ")


def build_report(loaded: LoadedConfig, samples: int = 1, cache: bool = True) -> DataReport:
    """Read the data and the tokenizer (no model weights) and report what the data becomes for training.

    Faults that would stop ``lora-ft train`` (too many unusable rows, over-length samples under
    ``overlength: error``, no trainable sample, a template that never trains its end-of-turn token) are listed in
    ``problems`` instead of raised, so the whole report is still seen. A dataset with no usable row at all, an
    unknown format or an unreadable file still raises :class:`UserError`, as in training.
    """
    from lora_ft.preparation import prepare

    cfg = loaded.config
    problems: list[str] = []
    with console.held_back():  # the report says it all, below; progress and notices still show
        prepared = prepare(_lenient(loaded), cfg, checks=False, cache=cache)
    loaded_data, chat = prepared.data, prepared.chat
    try:
        data.check_drops(loaded_data.reports, cfg.data.max_dropped_fraction)
    except UserError as exc:
        problems.append(_error_text(exc))
    source, pad_note, origin, renderer = chat.source, chat.pad_note, chat.template_origin, chat.renderer
    try:
        template_checks.check_end_of_turn_trained(renderer, cfg.data.train_on)
    except UserError as exc:
        problems.append(_error_text(exc))

    if prepared.method.prompts:
        splits = [analyse_prompts(name, tokens, len(rows)) for name, rows, tokens in (
            ("train", loaded_data.train, prepared.train_tokens), ("eval", loaded_data.eval, prepared.eval_tokens))
            if rows]
    elif prepared.is_preference:
        limit = getattr(cfg.method_settings, "max_prompt_length", None)
        splits = [analyse_pairs(name, prepared.encoded_pairs(name), cfg.data, limit)
                  for name, rows in (("train", loaded_data.train), ("eval", loaded_data.eval)) if rows]
    else:
        splits = [analyse_split(name, split)
                  for name, split in (("train", loaded_data.train), ("eval", loaded_data.eval)) if split]
    report = DataReport(
        config=str(loaded.path) if loaded.path else "<config>",
        tokenizer=source.display_name,
        tokenized=(loaded_data.describe() if hasattr(loaded_data, "describe") else
                   "rendered and measured now (RL prompts are not cached: training samples the answers)"),
        pad_token=pad_note,
        chat_template=origin,
        end_of_turn=renderer.end_of_turn,
        max_seq_length=cfg.data.max_seq_length,
        overlength=cfg.data.overlength,
        train_on=cfg.data.train_on,
        datasets=loaded_data.reports,
        eval_source=loaded_data.eval_source,
        splits=splits,
        duplicates=[split_duplicates(loaded_data.train, "train")]
        + ([split_duplicates(loaded_data.eval, "eval")] if loaded_data.eval else []),
        leakage=split_leakage(loaded_data.train, loaded_data.eval),
        samples=[] if prepared.method.prompts else  # RL prompts have no trained spans to show
        [shown for s in _shown(loaded_data.train, samples) for shown in rendered_sides(s, renderer, cfg.data)],
        problems=problems,
    )
    agents = count_agent_turns(loaded_data.train, renderer.tokenizer, cfg.data.reasoning)
    report.agents = agents if agents.any else None
    _judge(report, f"{cfg.method}.max_prompt_length" if prepared.is_preference else None)
    return report


def _first(split, count: int) -> list[Sample]:
    return split[:count] if isinstance(split, list) else split.head(count)


def _shown(split, count: int) -> list[Sample]:
    """The first ``count`` samples, and the first that calls a tool where none of them does."""
    first = _first(split, count)
    agent = first_agent_sample(split, first) if count else None
    return first + ([agent] if agent is not None else [])


def _judge(report: DataReport, prompt_key: str | None = None) -> None:
    """Add the warnings, and the problems that depend on the token counts (``prompt_key``: preference data's
    prompt limit, named in the over-length fix)."""
    limit, policy = report.max_seq_length, LengthPolicy(report.max_seq_length, report.overlength)
    for split in report.splits:
        if split.over_length and policy.stops:
            error = policy.error(split.over_length_locations, split.total.max, count=split.over_length,
                                 prompt_key=prompt_key)
            report.problems.append(f"{split.name}: {_error_text(error)}")
        elif split.over_length:
            report.warnings.append(policy.warning(split.over_length, split.name, split.trained_tokens_past_limit,
                                                  split.trained_tokens_in_over_length))
        if split.no_trained_token:
            report.warnings.append(f"{split.no_trained_token} {split.name} sample(s) have no trained token left "
                                   "and are left out")
        if split.cut_before_difference:
            report.warnings.append(f"{split.cut_before_difference} {split.name} pair(s) are cut at max_seq_length "
                                   f"{limit} before their two answers differ: no preference is left, so they are "
                                   "left out (raise data.max_seq_length)")
    train = report.split("train")
    if train is not None and train.kept == 0:
        report.problems.append("no training sample has a trained token left\n  fix: raise data.max_seq_length, or "
                               "check that the samples have answers")
    for dup in report.duplicates:
        if dup.extra_copies:
            weight = "training" if dup.split == "train" else "the eval loss"
            report.warnings.append(f"{dup.extra_copies} {dup.split} row(s) repeat another row exactly "
                                   f"({dup.groups} group(s)): they weigh more in {weight} than the others")
    if report.leakage.count:
        report.warnings.append(f"{report.leakage.count} eval row(s) also appear in train: the eval loss is "
                               "optimistic; remove them from one of the two")


# ---------------------------------------------------------------------------------------------------------------
# Text


def _split_lines(split: SplitReport, report: DataReport) -> list[str]:
    limit = report.max_seq_length
    lines = stats_lines(split.prompt, split.answer, split.total)
    if split.rejected is not None:
        lines = length_table([("prompt", split.prompt), ("chosen answer", split.answer),
                              ("rejected answer", split.rejected), ("total (longer answer)", split.total)])
    lines.append("")
    lines.append("samples by total length (tokens):")
    lines += ["  " + line for line in histogram_lines(split.histogram, limit, report.overlength)]
    lines.append("")
    if not split.over_length:
        lines.append(f"longer than max_seq_length {limit:,}: none")
    else:
        where = listed_locations(split.over_length_locations, split.over_length)
        consequence = LengthPolicy(limit, report.overlength).consequence(split.trained_tokens_past_limit,
                                                                         split.trained_tokens_in_over_length)
        lines.append(f"longer than max_seq_length {limit:,}: {split.over_length} [{where}]: {consequence}")
    if split.no_trained_token:
        where = listed_locations(split.no_trained_token_locations, split.no_trained_token)
        lines.append(f"left with no trained token: {split.no_trained_token} [{where}]: left out")
    else:
        lines.append("left with no trained token: none")
    if split.rejected is not None:
        if split.cut_before_difference:
            where = listed_locations(split.cut_before_difference_locations, split.cut_before_difference)
            lines.append(f"cut before their answers differ: {split.cut_before_difference} [{where}]: left out")
        else:
            lines.append("cut before their answers differ: none")
        lines.append(f"becomes: {split.kept:,} pairs, {split.tokens:,} tokens, {split.trained_tokens:,} in answers")
        return lines
    lines.append(f"becomes: {split.kept:,} samples, {split.tokens:,} tokens, {split.trained_tokens:,} trained")
    return lines


def marked_text(sample: RenderedSample, max_seq_length: int, color: bool = False) -> str:
    """The sample's text with trained spans in ``[[ ]]`` (or green, with ``color``) and the truncation point."""
    if color:
        opening, closing = GREEN, RESET
        cut = f"{RED}<<max_seq_length {max_seq_length}: the rest is cut>>{RESET}{DIM}"
    else:
        opening, closing = "[[", "]]"
        cut = f"<<max_seq_length {max_seq_length}: the rest is cut>>"
    events = [(start, 2, opening) for start, _ in sample.trained] + [(end, 0, closing) for _, end in sample.trained]
    if sample.cut_at is not None:
        events.append((sample.cut_at, 1, cut))
    pieces, position = [], 0
    for at, _, mark in sorted(events):
        pieces += [sample.text[position:at], mark]
        position = at
    pieces.append(sample.text[position:])
    if color and sample.cut_at is not None:
        pieces.append(RESET)
    return "".join(pieces)


def render_text(report: DataReport, color: bool = False) -> str:
    """The report as text for a terminal; ``color`` marks trained tokens with ANSI color instead of brackets."""
    lines = [
        f"data report for {report.config}",
        f"tokenizer       {report.tokenizer}; {report.pad_token}",
        *([f"tokens          {report.tokenized}"] if report.tokenized else []),
        f"chat template   {report.chat_template}; answers end with {report.end_of_turn!r}",
        (f"settings        max_seq_length {report.max_seq_length:,}, overlength {report.overlength}, "
         f"train_on {report.train_on}"),
        "",
        "== datasets",
    ]
    for dataset in report.datasets:
        lines += dataset.summary_lines()
    lines.append(f"eval data: {report.eval_source}")
    for split in report.splits:
        lines += ["", f"== {split.name}: {split.samples:,} samples (lengths before truncation)"]
        lines += _split_lines(split, report)
    if report.agents is not None:
        lines += ["", "== tools and reasoning (train)", *agent_lines(report.agents)]
    lines += ["", "== duplicates and leakage", *duplicate_lines(report.duplicates, report.leakage)]
    marking = "trained tokens in green" if color else "trained tokens in [[ ]]"
    for index, sample in enumerate(report.samples, start=1):
        heading = (f"== sample {index}: {sample.location} ({marking}; {sample.tokens} tokens, "
                   f"{sample.trained_tokens} trained)")
        lines += ["", heading]
        if sample.note:
            lines.append(f"({sample.note})")
        lines.append(marked_text(sample, report.max_seq_length, color).rstrip("\n"))
    lines += ["", "== verdict"]
    if report.problems:
        lines.append(f"`lora-ft train` would stop: {len(report.problems)} problem(s)")
        lines += ["- " + problem.replace("\n", "\n  ") for problem in report.problems]
    else:
        train = report.split("train")
        lines.append(f"ready to train: {train.kept:,} samples, {train.tokens:,} tokens, "
                     f"{train.trained_tokens:,} trained per epoch" if train else "ready to train")
    if report.warnings:
        lines.append("warnings:")
        lines += [f"- {warning}" for warning in report.warnings]
    return "\n".join(lines)
