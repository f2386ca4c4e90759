"""Statistics of instruction data, shared by the training run's summary and the data report: token-length
tables, histograms, exact duplicates and train/eval leakage, and their text lines."""

from __future__ import annotations

import hashlib
import math
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

from lora_ft.data.loading import LoadedData, Sample
from lora_ft.tokenization import IGNORE, TokenizedSet

MAX_LISTED = 20  # locations (or duplicate groups) kept per list in the report and its JSON
SHOWN = 3  # locations printed per line in the text form
GROUPS_SHOWN = 3  # duplicate groups / leaks printed in the text form
HISTOGRAM_BUCKETS = 12
BAR_WIDTH = 40

@dataclass
class LengthStats:
    """Summary statistics of a list of token counts (percentiles interpolated linearly, as numpy does)."""

    min: int = 0
    median: float = 0.0
    p90: float = 0.0
    p99: float = 0.0
    max: int = 0
    mean: float = 0.0

    @classmethod
    def of(cls, values: Sequence[int]) -> LengthStats:
        if not values:
            return cls()
        ordered = sorted(values)
        return cls(min=ordered[0], median=_percentile(ordered, 0.5), p90=_percentile(ordered, 0.9),
                   p99=_percentile(ordered, 0.99), max=ordered[-1], mean=round(sum(ordered) / len(ordered), 1))


def _percentile(ordered: Sequence[int], q: float) -> float:
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return round(ordered[low] + (ordered[high] - ordered[low]) * (position - low), 1)


@dataclass
class Bucket:
    """Samples whose total length is ``first`` to ``last`` tokens (both included)."""

    first: int
    last: int
    count: int


@dataclass
class DuplicateGroup:
    count: int
    locations: list[str]  # the first SHOWN... MAX_LISTED copies


@dataclass
class Duplicates:
    """Exact duplicates within one split: same conversation or text after Unicode and whitespace normalization."""

    split: str
    groups: int  # distinct rows that occur more than once
    extra_copies: int  # rows that repeat an earlier one
    first_groups: list[DuplicateGroup]


@dataclass
class Leak:
    eval_location: str
    train_location: str


@dataclass
class Leakage:
    """Eval samples that also appear in train: their eval loss measures memory, not generalisation."""

    count: int
    first: list[Leak]


def _key(sample: Sample) -> str:
    """A digest of a sample's content after NFKC normalization and whitespace collapsing (case is kept)."""

    def norm(text: str) -> str:
        return " ".join(unicodedata.normalize("NFKC", text).split())

    if sample.messages is not None:  # a preference sample: its prompt and both answers
        turns = [*sample.messages, *(sample.chosen or []), {"role": "/", "content": ""}, *(sample.rejected or [])]
        content = "\x1e".join(f"{m['role']}\x1f{norm(m['content'])}" for m in turns)
    else:
        content = "text\x1f" + norm(sample.text or "")
    return hashlib.blake2b(content.encode("utf-8"), digest_size=16).hexdigest()


def find_duplicates(samples: list[Sample], split: str) -> Duplicates:
    """Groups of samples with the same normalized content, largest first."""
    groups: dict[str, list[str]] = {}
    for sample in samples:
        groups.setdefault(_key(sample), []).append(sample.location)
    repeated = sorted((locs for locs in groups.values() if len(locs) > 1), key=lambda locs: -len(locs))
    return Duplicates(
        split=split,
        groups=len(repeated),
        extra_copies=sum(len(locs) - 1 for locs in repeated),
        first_groups=[DuplicateGroup(len(locs), locs[:MAX_LISTED]) for locs in repeated[:MAX_LISTED]],
    )


def find_leakage(train: list[Sample], evaluation: list[Sample]) -> Leakage:
    """Eval samples whose normalized content also occurs in train."""
    first_in_train: dict[str, str] = {}
    for sample in train:
        first_in_train.setdefault(_key(sample), sample.location)
    leaks = [Leak(s.location, first_in_train[k]) for s in evaluation if (k := _key(s)) in first_in_train]
    return Leakage(count=len(leaks), first=leaks[:MAX_LISTED])


def histogram(values: Sequence[int], buckets: int = HISTOGRAM_BUCKETS) -> list[Bucket]:
    """At most ``buckets`` equal-width buckets of a round width (1, 2, 2.5, 4, 5 x 10^k, or a power of two)."""
    if not values:
        return []
    low, high = min(values), max(values)
    widths = sorted({int(m * 10**k) for k in range(9) for m in (1, 2, 2.5, 4, 5)} | {2**k for k in range(31)})
    width = next(w for w in widths if (high - 1) // w - (low - 1) // w + 1 <= buckets)
    start = (low - 1) // width
    counts = [0] * ((high - 1) // width - start + 1)
    for value in values:
        counts[(value - 1) // width - start] += 1
    return [Bucket((start + i) * width + 1, (start + i + 1) * width, c) for i, c in enumerate(counts)]


def _listed(locations: Sequence[str], total: int, shown: int = SHOWN) -> str:
    more = total - min(shown, len(locations))
    return ", ".join(locations[:shown]) + (f" and {more} more" if more > 0 else "")


def _num(value: float) -> str:
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.1f}"


def duplicate_lines(report_duplicates: list[Duplicates], leakage: Leakage, *, groups: int = GROUPS_SHOWN) -> list[str]:
    """Duplicates and train/eval leakage, with the first few locations."""
    lines = []
    for dup in report_duplicates:
        if not dup.extra_copies:
            lines.append(f"{dup.split}: no exact duplicates")
            continue
        lines.append(f"{dup.split}: {dup.extra_copies} row(s) repeat another row exactly ({dup.groups} group(s))")
        for group in dup.first_groups[:groups]:
            lines.append(f"  {group.count} copies: {_listed(group.locations, group.count)}")
        if dup.groups > groups:
            lines.append(f"  ... and {dup.groups - groups} more group(s)")
    if leakage.count:
        shown = ", ".join(f"{leak.eval_location} = {leak.train_location}" for leak in leakage.first[:groups])
        more = f" and {leakage.count - groups} more" if leakage.count > groups else ""
        lines.append(f"eval rows also in train (leakage): {leakage.count} [{shown}{more}]")
    else:
        lines.append("eval rows also in train (leakage): none")
    return lines


def summary_lines(loaded_data: LoadedData) -> list[str]:
    """The short form printed at the start of ``lora-ft train``: datasets, eval split, duplicates, leakage."""
    lines = [line for report in loaded_data.reports for line in report.summary_lines()]
    lines.append(f"eval data: {loaded_data.eval_source}")
    duplicates = find_duplicates(loaded_data.train, "train")
    leakage = find_leakage(loaded_data.train, loaded_data.eval)
    if duplicates.extra_copies or leakage.count:
        lines += duplicate_lines([duplicates], leakage, groups=1)
    return lines


OVERLENGTH_EFFECT = {"truncate": "are truncated", "drop": "are left out", "error": "stop training"}


def histogram_lines(buckets: list[Bucket], max_seq_length: int, overlength: str = "truncate") -> list[str]:
    """Text bars, one per bucket, with ``max_seq_length`` marked."""
    if not buckets:
        return []
    peak = max(b.count for b in buckets) or 1
    labels = [f"{b.first:,}-{b.last:,}" for b in buckets]
    label_width = max(len(label) for label in labels)
    count_width = len(f"{peak:,}")
    marker = f"{'':>{label_width}}   {'-' * 8} max_seq_length {max_seq_length:,}: longer samples " \
             f"{OVERLENGTH_EFFECT[overlength]}"
    lines = []
    for bucket, label in zip(buckets, labels):
        if bucket.first == max_seq_length + 1:
            lines.append(marker)
        bar = "█" * max(1 if bucket.count else 0, round(BAR_WIDTH * bucket.count / peak))
        line = f"{label:>{label_width}} | {bucket.count:>{count_width},} {bar}".rstrip()
        if bucket.first <= max_seq_length < bucket.last:
            line += f"  <- max_seq_length {max_seq_length:,} is in this range"
        lines.append(line)
    if buckets[-1].last <= max_seq_length:
        lines.append(f"(max_seq_length {max_seq_length:,} is above the longest sample)")
    return lines


def stats_lines(prompt: LengthStats, answer: LengthStats, total: LengthStats, title: str = "tokens") -> list[str]:
    """The token-length table: min, median, p90, p99, max and mean of prompts, answers and whole samples."""
    return length_table([("prompt (not trained)", prompt), ("answer (trained)", answer), ("total", total)], title)


def length_table(rows: list[tuple[str, LengthStats]], title: str = "tokens") -> list[str]:
    """min, median, p90, p99, max and mean of each named set of lengths, one line each."""
    lines = [f"{title:<28}{'min':>8}{'median':>9}{'p90':>9}{'p99':>9}{'max':>9}{'mean':>9}"]
    for label, stats in rows:
        lines.append(f"{label:<28}{_num(stats.min):>8}{_num(stats.median):>9}{_num(stats.p90):>9}"
                     f"{_num(stats.p99):>9}{_num(stats.max):>9}{_num(stats.mean):>9}")
    return lines


def tokenized_stats_lines(tokens: TokenizedSet) -> list[str]:
    """The length table of samples as they will be trained (after the over-length policy)."""
    totals = [len(ids) for ids in tokens.input_ids]
    answers = [sum(1 for t in labels if t != IGNORE) for labels in tokens.labels]
    prompts = [t - a for t, a in zip(totals, answers)]
    if not totals:
        return []
    return stats_lines(LengthStats.of(prompts), LengthStats.of(answers), LengthStats.of(totals),
                       "train tokens, as trained")


