"""Whether the tuned model differs from the model it started from by more than noise.

Both models are scored on the same samples, so each sample gives a paired difference (tuned minus before). A
paired bootstrap resamples the samples with replacement (:data:`RESAMPLES` times, seed :data:`SEED`) and takes the
2.5th and 97.5th percentiles of the resampled statistic: a 95% interval for the difference. The statistic is the
one the report shows: the mean difference for per-answer scores (ROUGE-L, token F1, reward margins), and for the
loss, the difference of the summed per-sample losses over the summed answer tokens (the per-token loss change).

A difference is judged:

- ``no difference``: every paired difference is zero (identical answers, identical losses);
- ``too few to tell``: fewer than :data:`MIN_PAIRS` pairs, where not even every pair moving the same way is
  significant at 5% (a two-sided sign test needs 6);
- ``better`` / ``worse``: the whole interval lies on one side of zero;
- ``within noise``: the interval includes zero.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

RESAMPLES = 2000
SEED = 0
LEVEL = 0.95
MIN_PAIRS = 6  # 2 * 0.5**5 > 0.05: below 6 pairs even a unanimous direction is not significant
TOLERANCE = 1e-6  # a paired difference this small (relative) is floating-point noise, not a difference
CELLS_PER_CHUNK = 4_000_000  # resampled values held in memory at a time


@dataclass(frozen=True)
class Difference:
    """Tuned minus before, with its 95% paired-bootstrap interval over ``n`` samples."""

    change: float
    low: float
    high: float
    n: int
    identical: bool = False  # every paired difference is zero

    def judgement(self, higher_is_better: bool) -> str:
        if self.identical:
            return "no difference"
        if self.n < MIN_PAIRS:
            return "too few to tell"
        if self.low > 0 or self.high < 0:
            return "better" if (self.low > 0) == higher_is_better else "worse"
        return "within noise"

    def interval(self, form: str = "{:+.3f}") -> str:
        """``95% interval -0.41 to -0.36, n=70``."""
        return f"{LEVEL:.0%} interval {form.format(self.low)} to {form.format(self.high)}, n={self.n}"

    def describe(self, higher_is_better: bool, form: str = "{:+.3f}") -> str:
        """``-0.385 (95% interval -0.41 to -0.36, n=70: better)``."""
        return f"{form.format(self.change)} ({self.interval(form)}: {self.judgement(higher_is_better)})"

    def as_dict(self, higher_is_better: bool) -> dict:
        return {**asdict(self), "level": LEVEL, "judgement": self.judgement(higher_is_better)}


def paired_mean(before: Sequence[float], after: Sequence[float]) -> Difference:
    """The mean of ``after[i] - before[i]``, with its interval."""
    return paired_ratio(before, after, [1.0] * len(before))


def paired_ratio(before: Sequence[float], after: Sequence[float], weights: Sequence[float]) -> Difference:
    """``sum(after - before) / sum(weights)`` (for the loss: summed per-sample losses over their tokens), with its
    interval: samples are resampled whole, with their weights."""
    import numpy as np

    if not len(before) == len(after) == len(weights):
        raise ValueError("paired figures must have one value per sample on each side")
    n = len(before)
    if n == 0:
        return Difference(0.0, 0.0, 0.0, 0)
    old, new, weight = (np.asarray(v, dtype=np.float64) for v in (before, after, weights))
    diffs = new - old
    if np.all(np.abs(diffs) <= TOLERANCE * np.maximum(1.0, np.abs(old))):
        return Difference(0.0, 0.0, 0.0, n, identical=True)
    change = float(diffs.sum() / weight.sum())
    rng = np.random.default_rng(SEED)
    chunk = max(1, CELLS_PER_CHUNK // n)
    stats = []
    for start in range(0, RESAMPLES, chunk):
        index = rng.integers(0, n, size=(min(chunk, RESAMPLES - start), n))
        stats.append(diffs[index].sum(axis=1) / weight[index].sum(axis=1))
    low, high = np.quantile(np.concatenate(stats), [(1 - LEVEL) / 2, 1 - (1 - LEVEL) / 2])
    return Difference(change, float(low), float(high), n)
