"""Curves and figures for the page, from ``metrics.jsonl`` records (one run's, or several runs' overlaid)."""

from __future__ import annotations

from lora_ft.ui.runs_index import RunSummary, figure, read_metrics

# the curves a run's page draws: (metrics.jsonl key, title)
CURVES = (("loss", "training loss"), ("eval_loss", "eval loss"), ("learning_rate", "learning rate"))
STEP, VALUE, RUN = "step", "value", "run"


def points(records: list[dict], key: str) -> list[tuple[int, float]]:
    """(step, value) of every record that logged ``key``, in step order; a resumed run's repeated step keeps its
    last value."""
    by_step: dict[int, float] = {}
    for record in records:
        value = record.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value == value:
            by_step[record["step"]] = float(value)
    return sorted(by_step.items())


def frame(runs: dict[str, list[dict]], key: str):
    """A table for a line plot: one row per (run, step) with the value of ``key``."""
    import pandas as pd

    rows = [(name, step, value) for name, records in runs.items() for step, value in points(records, key)]
    # typed even when empty: the plot fixes its axes' kinds (numbers, not categories) at its first drawing
    return pd.DataFrame(rows, columns=[RUN, STEP, VALUE]).astype({RUN: "str", STEP: "int64", VALUE: "float64"})


def run_frames(summary: RunSummary) -> dict[str, object]:
    """The curves of one run, by metrics key."""
    records = {summary.name: read_metrics(summary.path)}
    return {key: frame(records, key) for key, _ in CURVES}


def compare_frames(summaries: list[RunSummary]) -> dict[str, object]:
    """The curves of several runs, overlaid (one colour per run), by metrics key."""
    records = {s.name: read_metrics(s.path) for s in summaries}
    return {key: frame(records, key) for key, _ in CURVES}


COMPARE_HEADERS = ["run", "status", "method", "base model", "steps", "final train loss", "eval loss before",
                   "eval loss after", "change", "tokens/s", "peak memory", "train time"]


def _final(records: list[dict], key: str) -> float | None:
    found = points(records, key)
    return found[-1][1] if found else None


def compare_row(summary: RunSummary) -> list:
    """One run's figures in the compare table: from its manifest when it finished, else from its metrics so far."""
    metrics = summary.metrics
    loss = metrics.get("train_loss", _final(read_metrics(summary.path), "loss"))
    before, after = summary.eval_before, summary.eval_after
    change = f"{after - before:+.4f}" if before is not None and after is not None else ""
    rate = metrics.get("tokens_per_second")
    seconds = metrics.get("train_seconds")
    return [summary.name, summary.status_text, summary.method, summary.base, summary.steps_text,
            figure(loss), figure(before), figure(after), change, "" if rate is None else f"{rate:.0f}",
            metrics.get("peak_memory", ""), "" if seconds is None else f"{seconds / 60:.1f} min"]
