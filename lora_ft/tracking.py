"""Experiment trackers: W&B (online or offline), TensorBoard, and the others transformers supports.

Secrets stay in the environment: lora-ft never reads a W&B key or hub token into the config, and the resolved
config logged to a tracker holds none.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from lora_ft.config import RunConfig


@dataclass
class Trackers:
    report_to: list[str]  # names passed to transformers (integrations it sets up itself)
    callbacks: list = field(default_factory=list)  # callbacks lora-ft set up with its own paths
    notes: list[str] = field(default_factory=list)
    wandb_run = None

    def finish(self) -> None:
        if self.wandb_run is not None:
            self.wandb_run.finish()
            self.wandb_run = None


def _wandb_has_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return "api.wandb.ai" in netrc.read_text()
    except OSError:
        return False


def start_trackers(cfg: RunConfig, run_dir: Path, resolved_config: dict) -> Trackers:
    """Start the configured trackers with their files under the run directory."""
    names = [n for n in cfg.tracking.report_to if n != "none"]
    trackers = Trackers(report_to=[n for n in names if n not in ("wandb", "tensorboard")] or ["none"])
    if "tensorboard" in names:
        from torch.utils.tensorboard import SummaryWriter
        from transformers.integrations import TensorBoardCallback

        log_dir = run_dir / "tensorboard"
        trackers.callbacks.append(TensorBoardCallback(tb_writer=SummaryWriter(log_dir=str(log_dir))))
        trackers.notes.append(f"TensorBoard logs: {log_dir}  (view: tensorboard --logdir {log_dir})")
    if "wandb" in names:
        import wandb
        from transformers.integrations import WandbCallback

        mode = os.environ.get("WANDB_MODE")
        if mode is None and not _wandb_has_credentials():
            mode = "offline"
            trackers.notes.append("W&B: no API key found (WANDB_API_KEY or `wandb login`), so the run is "
                                  "logged offline")
        # A resumed run goes on logging into the same W&B run: its id is kept under the run directory.
        id_file = run_dir / "wandb" / "lora-ft-run-id"
        id_file.parent.mkdir(parents=True, exist_ok=True)
        run_id = id_file.read_text().strip() if id_file.is_file() else None
        run = wandb.init(
            id=run_id,
            resume="allow" if run_id else None,
            project=cfg.tracking.project,
            name=cfg.tracking.run_name,
            tags=cfg.tracking.tags or None,
            config={"lora_ft": resolved_config},
            dir=str(run_dir),
            mode=mode,
            reinit="finish_previous",
        )
        trackers.wandb_run = run
        if run_id is None:
            id_file.write_text(run.id + "\n")
        trackers.callbacks.append(WandbCallback())  # reuses the run started above
        if getattr(run, "offline", False) or mode == "offline":
            trackers.notes.append(f"W&B offline run files: {run.dir.rsplit('/files', 1)[0]}  "
                                  f"(upload later: wandb sync {run.dir.rsplit('/files', 1)[0]})")
        else:
            trackers.notes.append(f"W&B run: {run.url}")
    return trackers
