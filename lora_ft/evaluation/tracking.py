"""Logging an evaluation to the run's own trackers, next to its training curves.

W&B: the run's W&B run is resumed (its id is kept under the run directory) and the figures go into its summary,
with a table of every answer. TensorBoard: scalars and the verdict are written into the run's ``tensorboard/``
folder at the run's last step. Other trackers are named as not logged to. A tracker that fails never fails the
evaluation: its report is written first, and the failure is reported as a note.
"""

from __future__ import annotations

import os

from lora_ft.rundir.finished import FinishedRun

TABLE_COLUMNS = ("set", "location", "prompt", "reference", "base", "tuned", "base_rouge_l", "tuned_rouge_l",
                 "tuned_stopped")


def _table_rows(records: list[dict]) -> list[list]:
    return [[r["set"], r["location"], r["prompt"], r["reference"], r["base"], r["tuned"],
             round(r["base_scores"]["rouge_l"], 2), round(r["tuned_scores"]["rouge_l"], 2),
             r["tuned_scores"]["stopped"]] for r in records if "base_scores" in r]  # an RL run's: its rewards


def _log_wandb(run: FinishedRun, metrics: dict, verdict: str, records: list[dict]) -> str:
    import wandb

    from lora_ft.tracking import wandb_has_credentials, wandb_run_settings

    mode = os.environ.get("WANDB_MODE") or ("online" if wandb_has_credentials() else "offline")
    wandb_run = wandb.init(mode=mode, **wandb_run_settings(run.config, run.run_dir))
    try:
        wandb_run.summary.update({**metrics, "eval/verdict": verdict})
        wandb_run.log({"eval/answers": wandb.Table(columns=list(TABLE_COLUMNS), data=_table_rows(records))})
    finally:
        wandb_run.finish()
    where = "offline (upload with `wandb sync`)" if mode == "offline" else "online"
    return f"results logged to the run's W&B run ({where})"


def _log_tensorboard(run: FinishedRun, metrics: dict, verdict: str) -> str:
    from torch.utils.tensorboard import SummaryWriter

    step = int(run.manifest.get("metrics", {}).get("steps") or 0)
    writer = SummaryWriter(log_dir=str(run.run_dir / "tensorboard"))
    try:
        for key, value in metrics.items():
            writer.add_scalar(key, value, global_step=step)
        writer.add_text("eval/verdict", verdict, global_step=step)
    finally:
        writer.close()
    return f"results logged to TensorBoard: {run.run_dir / 'tensorboard'} (step {step})"


def log_report(run: FinishedRun, report, records: list[dict]) -> list[str]:
    """Log the report to each tracker the run was configured with; returns one line per tracker, to show."""
    names = [n for n in run.config.tracking.report_to if n != "none"]
    metrics, verdict, lines = report.tracker_metrics(), report.verdict(), []
    for name in names:
        try:
            if name == "wandb":
                lines.append(_log_wandb(run, metrics, verdict, records))
            elif name == "tensorboard":
                lines.append(_log_tensorboard(run, metrics, verdict))
            else:
                lines.append(f"results not logged to {name}: lora-ft logs evaluations to wandb and tensorboard; "
                             "the report files hold every figure")
        except Exception as exc:  # noqa: BLE001 - the report is written; a tracker problem is only a note
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            lines.append(f"results not logged to {name}: {first}")
    return lines
