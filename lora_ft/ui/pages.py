"""What each part of the page shows, computed from the run directories: plain functions of the runs folder and the
user's choices, returning what the page's components take (:mod:`lora_ft.ui.app` lays them out and wires them).

A fault a user can fix is shown as the CLI's one-screen error (:class:`lora_ft.errors.UserError`'s text); anything
else as one line naming it, its traceback going to the terminal that started the page, never into the page.
"""

from __future__ import annotations

import logging
import traceback
from pathlib import Path

from lora_ft.errors import UserError
from lora_ft.ui import curves, jobs, run_form, runs_index, served_files

log = logging.getLogger("lora_ft.ui")


def failure_text(exc: BaseException) -> str:
    """The page's text for a failure: the CLI's error for a user's fault, one line for anything else."""
    if isinstance(exc, UserError):
        return exc.render()
    log.error("lora-ft ui: %s", "".join(traceback.format_exception(exc)))
    first = (str(exc).strip().splitlines() or [""])[0][:300]
    return (f"error: unexpected failure: {type(exc).__name__}: {first}\n  fix: the terminal that started "
            "`lora-ft ui` shows the details; please report them if they look like a bug in lora-ft")


# the parts of a run's page, in the order the page lays them out
RUN_PAGE_PARTS = ("status", "progress", *(key for key, _ in curves.CURVES), "eval_report", "answers", "config", "card",
                  "downloads")


class Pages:
    """The page's view of one runs folder."""

    def __init__(self, runs_dir: Path, here: Path | None = None) -> None:
        self.runs_dir = Path(runs_dir).resolve()
        self.here = Path(here or Path.cwd())  # paths typed in the form are read from here
        self.jobs = jobs.Jobs(self.runs_dir)

    # --- runs ---------------------------------------------------------------------------------------------------
    def runs(self) -> list[runs_index.RunSummary]:
        return runs_index.list_runs(self.runs_dir)

    def runs_table(self) -> list[list]:
        return [summary.row() for summary in self.runs()]

    def names(self, finished_only: bool = False) -> list[str]:
        return [s.name for s in self.runs() if not finished_only or s.status == runs_index.FINISHED]

    def summary(self, name: str) -> runs_index.RunSummary:
        """The run called ``name``, which must lie inside the runs folder."""
        path = served_files.inside(self.runs_dir, self.runs_dir / (name or ""))
        if not name or path is None or not runs_index.is_run_dir(path):
            raise UserError(f"no run called {name!r} in {self.runs_dir}", fix="pick a run from the list")
        return runs_index.summarize(path, self.runs_dir)

    # --- a run ----------------------------------------------------------------------------------------------------
    def status_markdown(self, summary: runs_index.RunSummary) -> str:
        job = self.jobs.get(summary.name)
        lines = [f"### {summary.name}", f"**status:** {summary.status_text} · **method:** {summary.method} · "
                 f"**base:** {summary.base} · **data:** {summary.data} · **steps:** {summary.steps_text}"]
        if summary.eval_before is not None or summary.eval_after is not None:
            lines.append(f"**eval loss:** {runs_index.figure(summary.eval_before) or '-'} before, "
                         f"{runs_index.figure(summary.eval_after) or '-'} after")
        if summary.verdict:
            lines.append(f"**eval verdict:** {summary.verdict}")
        if job is not None:
            lines.append(f"**started here:** {job.outcome()}")
        elif summary.status == runs_index.INTERRUPTED:
            lines.append("Resume trains it on from its newest checkpoint (the same as running its `lora-ft train` "
                         "command again).")
        return "\n\n".join(lines)

    def live(self, name: str) -> dict:
        """The parts of a run's page that change while it trains (keys of :meth:`run_page`): everything for a run
        that trains or was started here, its status alone for any other."""
        job = self.jobs.get(name)
        try:
            summary = self.summary(name)
        except UserError:
            if job is None:
                raise
            return {"status": f"### {name}\n\n**started here:** {job.outcome()}", "progress": self.progress_text(name)}
        if summary.status != runs_index.RUNNING and job is None:
            return {"status": self.status_markdown(summary)}
        return self._page(summary)

    def progress_text(self, name: str) -> str:
        """The training log of a run this page started (its last lines), or the run's progress from its files."""
        log_file = jobs.log_path(self.runs_dir, name) if name else None
        if log_file is not None and log_file.is_file():
            return jobs.log_tail(log_file)
        return "(not started from this page: its output went to the terminal that started it)" if name else ""

    def run_page(self, name: str) -> dict:
        """Everything a run's page shows, by part (:data:`RUN_PAGE_PARTS`)."""
        return self._page(self.summary(name))

    def _page(self, summary: runs_index.RunSummary) -> dict:
        path = summary.path
        card = path / "adapter" / "README.md"
        report = path / runs_index.EVAL_DIR / "report.md"
        return {
            "status": self.status_markdown(summary),
            "progress": self.progress_text(summary.name),
            **curves.run_frames(summary),  # by metrics key: loss, eval_loss, learning_rate
            "config": _read(path / "config.yaml") or "(no config.yaml yet)",
            "eval_report": _read(report) or ("No evaluation yet. `lora-ft eval RUN` compares the base and tuned "
                                            "model, and its report appears here."),
            "answers": answer_rows(path),
            "card": _read(card) or "(the model card is written when the run finishes)",
            "downloads": served_files.downloads_markdown(self.runs_dir, path),
        }

    def data_report(self, name: str) -> str:
        """``lora-ft data``'s report of the run's data, as the command prints it (without colour)."""
        from lora_ft.config import load_config
        from lora_ft.data_report import report as data_report

        summary = self.summary(name)
        loaded = load_config(summary.path / "config.yaml")
        return data_report.render_text(data_report.build_report(loaded, samples=1, cache=True), color=False)

    # --- compare ----------------------------------------------------------------------------------------------------
    def compare(self, names: list[str]) -> tuple[dict, list[list]]:
        if len(names or []) < 1:
            raise UserError("no runs chosen to compare", fix="choose two or more runs")
        summaries = [self.summary(name) for name in names]
        return curves.compare_frames(summaries), [curves.compare_row(s) for s in summaries]

    # --- a new run ------------------------------------------------------------------------------------------------
    def form_config(self, name: str, values: dict, more: str) -> tuple[str, Path]:
        """The form's run name and config file (written, not yet checked)."""
        name = run_form.check_name(name, self.runs_dir)
        data = run_form.config_data(values, more or "", self.runs_dir / name, self.here)
        return name, run_form.write_config(jobs.config_path(self.runs_dir, name), data)

    def start(self, name: str, config: Path) -> str:
        ok, text = run_form.validate(config)
        if not ok:
            return text
        job = self.jobs.start(name, config, self.runs_dir / name)
        return f"started: lora-ft train {config} (pid {job.process.pid}); its progress shows below"

    def stop(self, name: str) -> str:
        return self.jobs.stop(name, self.summary(name).path)

    def resume(self, name: str) -> str:
        summary = self.summary(name)
        if summary.status == runs_index.FINISHED:
            raise UserError(f"{name} has finished; there is nothing to resume",
                            fix="start a new run (the New run tab) to train further")
        if summary.status == runs_index.RUNNING:
            raise UserError(f"{name} is training now", fix="wait for it, or stop it first")
        job = self.jobs.resume(name, summary.path)
        return f"resumed: lora-ft train {job.config} (pid {job.process.pid})"


def _read(path: Path) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError:
        return ""


ANSWER_HEADERS = ["set", "prompt", "reference", "base answer", "base ROUGE-L", "tuned answer", "tuned ROUGE-L"]


def answer_rows(run_dir: Path) -> list[list]:
    """``lora-ft eval``'s answers, base and tuned side by side with their ROUGE-L."""
    rows = []
    for sample in runs_index.eval_answers(run_dir):
        base, tuned = sample.get("base_scores") or {}, sample.get("tuned_scores") or {}
        rows.append([sample.get("set", ""), sample.get("prompt", ""), sample.get("reference", ""),
                     sample.get("base", ""), _score(base.get("rouge_l")), sample.get("tuned", ""),
                     _score(tuned.get("rouge_l"))])
    return rows


def _score(value) -> str:
    return "" if value is None else f"{value:.1f}"  # ROUGE-L in points (0-100), as the report gives it
