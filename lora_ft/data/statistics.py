"""Statistics of instruction data, shared by the training run's summary and the data report: token-length
tables, histograms, exact duplicates and train/eval leakage, and their text lines."""

from __future__ import annotations

import hashlib
import json
import math
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from lora_ft.data.length_policy import DEFAULT_OVERLENGTH, LengthPolicy
from lora_ft.samples import Sample

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
        import numpy as np

        ordered = np.sort(np.asarray(values, dtype=np.int64))
        if not len(ordered):
            return cls()
        return cls(min=int(ordered[0]), median=_percentile(ordered, 0.5), p90=_percentile(ordered, 0.9),
                   p99=_percentile(ordered, 0.99), max=int(ordered[-1]), mean=round(float(ordered.mean()), 1))


def _percentile(ordered: Sequence[int], q: float) -> float:
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return round(float(ordered[low] + (ordered[high] - ordered[low]) * (position - low)), 1)


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


def _extra(message: dict) -> str:
    """A turn's calls, reasoning and call id, as canonical JSON (nothing for a plain turn)."""
    extra = {k: v for k, v in message.items() if k not in ("role", "content")}
    return "\x1f" + json.dumps(extra, sort_keys=True) if extra else ""


def content_key(sample: Sample) -> bytes:
    """A 16-byte digest of a sample's content after NFKC normalization and whitespace collapsing (case is kept)."""

    def norm(text: str) -> str:
        return " ".join(unicodedata.normalize("NFKC", text).split())

    if sample.messages is not None:  # a preference sample: its prompt and both answers
        turns = [*sample.messages, *(sample.chosen or []), {"role": "/", "content": ""}, *(sample.rejected or [])]
        content = "\x1e".join(f"{m['role']}\x1f{norm(m['content'])}{_extra(m)}" for m in turns)
        if sample.tools:
            content += "\x1etools\x1f" + json.dumps(sample.tools, sort_keys=True)
    else:
        content = "text\x1f" + norm(sample.text or "")
    return hashlib.blake2b(content.encode("utf-8"), digest_size=16).digest()


def find_duplicates(samples: list[Sample], split: str) -> Duplicates:
    """Groups of samples with the same normalized content, largest first."""
    return duplicates_of(key_array([content_key(s) for s in samples]), lambda i: samples[i].location, split)


def find_leakage(train: list[Sample], evaluation: list[Sample]) -> Leakage:
    """Eval samples whose normalized content also occurs in train."""
    return leakage_of(key_array([content_key(s) for s in train]), key_array([content_key(s) for s in evaluation]),
                      lambda i: train[i].location, lambda i: evaluation[i].location)


def key_array(keys):
    """Content keys (:func:`content_key`) as a numpy array of 16-byte strings: 16 bytes a sample."""
    import numpy as np

    return np.array(keys, dtype="S16") if len(keys) else np.zeros(0, dtype="S16")


def duplicates_of(keys, location_of: Callable[[int], str], split: str) -> Duplicates:
    """Duplicate groups among samples by their content keys, largest first (then in order of first
    appearance), each with its first locations in order; exact, in memory of 16 bytes a sample."""
    import numpy as np

    if not len(keys):
        return Duplicates(split, 0, 0, [])
    _, first, inverse, counts = np.unique(keys, return_index=True, return_inverse=True, return_counts=True)
    repeated = np.nonzero(counts > 1)[0]
    order = repeated[np.lexsort((first[repeated], -counts[repeated]))]
    groups = []
    for group in order[:MAX_LISTED]:
        members = np.nonzero(inverse == group)[0][:MAX_LISTED]
        groups.append(DuplicateGroup(int(counts[group]), [location_of(int(i)) for i in members]))
    return Duplicates(split=split, groups=len(repeated), extra_copies=int((counts[repeated] - 1).sum()),
                      first_groups=groups)


def leakage_of(train_keys, eval_keys, train_location: Callable[[int], str],
               eval_location: Callable[[int], str]) -> Leakage:
    """Eval samples whose content key occurs in train, each paired with its first train copy."""
    import numpy as np

    if not len(train_keys) or not len(eval_keys):
        return Leakage(0, [])
    unique, first = np.unique(train_keys, return_index=True)
    at = np.minimum(np.searchsorted(unique, eval_keys), len(unique) - 1)
    leaked = np.nonzero(unique[at] == eval_keys)[0]
    return Leakage(count=len(leaked), first=[Leak(eval_location(int(i)), train_location(int(first[at[i]])))
                                             for i in leaked[:MAX_LISTED]])


def histogram(values: Sequence[int], buckets: int = HISTOGRAM_BUCKETS) -> list[Bucket]:
    """At most ``buckets`` equal-width buckets of a round width (1, 2, 2.5, 4, 5 x 10^k, or a power of two)."""
    import numpy as np

    values = np.asarray(values, dtype=np.int64)
    if not len(values):
        return []
    low, high = int(values.min()), int(values.max())
    widths = sorted({int(m * 10**k) for k in range(9) for m in (1, 2, 2.5, 4, 5)} | {2**k for k in range(31)})
    width = next(w for w in widths if (high - 1) // w - (low - 1) // w + 1 <= buckets)
    start = (low - 1) // width
    counts = np.bincount((values - 1) // width - start, minlength=(high - 1) // width - start + 1)
    return [Bucket((start + i) * width + 1, (start + i + 1) * width, int(c)) for i, c in enumerate(counts)]


def listed_locations(locations: Sequence[str], total: int, shown: int = SHOWN) -> str:
    """The first ``shown`` locations, and how many more of ``total`` there are."""
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
            lines.append(f"  {group.count} copies: {listed_locations(group.locations, group.count)}")
        if dup.groups > groups:
            lines.append(f"  ... and {dup.groups - groups} more group(s)")
    if leakage.count:
        shown = ", ".join(f"{leak.eval_location} = {leak.train_location}" for leak in leakage.first[:groups])
        more = f" and {leakage.count - groups} more" if leakage.count > groups else ""
        lines.append(f"eval rows also in train (leakage): {leakage.count} [{shown}{more}]")
    else:
        lines.append("eval rows also in train (leakage): none")
    return lines


def split_duplicates(split, name: str) -> Duplicates:
    """:class:`Duplicates` of a split: a list of samples, or a tokenized split with its content keys."""
    if isinstance(split, list):
        return find_duplicates(split, name)
    return split.duplicates(name)


def split_leakage(train, evaluation) -> Leakage:
    """:class:`Leakage` between two splits, lists of samples or tokenized splits."""
    if evaluation is None or not len(evaluation):
        return Leakage(0, [])
    if isinstance(train, list):
        return find_leakage(train, list(evaluation))
    return leakage_of(train.keys(), evaluation.keys(), train.location, evaluation.location)


def summary_lines(data) -> list[str]:
    """The short form printed at the start of ``lora-ft train``: datasets, eval split, duplicates, leakage."""
    lines = [line for report in data.reports for line in report.summary_lines()]
    lines.append(f"eval data: {data.eval_source}")
    duplicates = split_duplicates(data.train, "train")
    leakage = split_leakage(data.train, data.eval)
    if duplicates.extra_copies or leakage.count:
        lines += duplicate_lines([duplicates], leakage, groups=1)
    return lines


def histogram_lines(buckets: list[Bucket], max_seq_length: int, overlength: str = DEFAULT_OVERLENGTH) -> list[str]:
    """Text bars, one per bucket, with ``max_seq_length`` marked."""
    if not buckets:
        return []
    peak = max(b.count for b in buckets) or 1
    labels = [f"{b.first:,}-{b.last:,}" for b in buckets]
    label_width = max(len(label) for label in labels)
    count_width = len(f"{peak:,}")
    marker = f"{'':>{label_width}}   {'-' * 8} max_seq_length {max_seq_length:,}: longer samples " \
             f"{LengthPolicy(max_seq_length, overlength).effect}"
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


def tokenized_stats_lines(split) -> list[str]:
    """The length table of samples as they will be trained (after the over-length policy)."""
    totals, answers = split.lengths(kept_only=True)
    if not len(totals):
        return []
    prompts = totals - answers
    return stats_lines(LengthStats.of(prompts), LengthStats.of(answers), LengthStats.of(totals),
                       "train tokens, as trained")
