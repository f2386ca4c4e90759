"""What a training run that stopped early says: what was kept in the run directory, and how to go on."""

from __future__ import annotations

import errno
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lora_ft.config import LoadedConfig
from lora_ft.errors import UserError
from lora_ft.rundir import artifacts, checkpoints
from lora_ft.rundir import lock as run_lock


def final_save_failed(run_dir: Path, steps: int, exc: OSError, adapter_size: int) -> UserError:
    """The message for a final adapter (or manifest) that could not be written; what is kept, how to finish."""
    import shutil

    from lora_ft.errors import CheckpointWriteFailed

    shutil.rmtree(run_dir / artifacts.STAGED_ADAPTER, ignore_errors=True)  # half an adapter: never used
    committed = checkpoints.scan_names(run_dir / artifacts.CHECKPOINT_DIR)[0]
    newest = committed[-1] if committed else None
    newest_step = int(checkpoints.NAME.match(newest.name).group(1)) if newest else 0
    if newest and newest_step >= steps:
        kept = (f"the trained weights are safe in {newest.name}, the run's last step; the same command writes the "
                "adapter from it without training again")
    elif newest:
        kept = f"the newest complete checkpoint is {newest.name}; the same command resumes from it"
    else:
        kept = "no checkpoint was kept (train.save_steps: null), so the same command trains again from step 0"
    return CheckpointWriteFailed(
        f"could not write the final adapter in {run_dir} ({exc.strerror or exc}); {kept}",
        fix=f"free at least {adapter_size * 1.1 / 2**20 + 8:,.0f} MiB under {run_dir}, then run the same command",
    )


def _resume_command(loaded: LoadedConfig) -> str:
    """The command that resumes: the config, its overrides, and the flags ``lora-ft train --nproc`` launched the
    processes with (``LORA_FT_LAUNCH_FLAGS``, which the launcher gives them)."""
    import os

    overrides = "".join(f" --set {o}" for o in loaded.overrides)
    launched = os.environ.get("LORA_FT_LAUNCH_FLAGS")
    return f"lora-ft train {loaded.path or 'CONFIG'}{overrides}{' ' + launched if launched else ''}"


def interrupted(outcome, loaded: LoadedConfig, run_dir: Path) -> UserError:
    """The message for a run stopped by SIGTERM or SIGINT: what was saved and how to go on."""
    import signal

    from lora_ft.errors import RunInterrupted

    name = signal.Signals(outcome.interrupted_by).name
    saved = (f"checkpoint {outcome.checkpoint} is complete" if outcome.checkpoint
             else "no checkpoint could be saved")
    return RunInterrupted(f"{name} received: training stopped after step {outcome.steps}; {saved}",
                          outcome.interrupted_by,
                          fix=f"run the same command to resume from there: {_resume_command(loaded)}")


def checkpoint_write_failed(checkpoint_dir: Path, step: int, reason: str,
                            what: str = "write the checkpoint at step") -> UserError:
    """The message for a checkpoint that could not be written: the previous one is intact and is resumed from."""
    import shutil

    from lora_ft.errors import CheckpointWriteFailed

    cut_short = checkpoint_dir / f"checkpoint-{step}"
    if checkpoints.is_cut_short(cut_short) and run_lock.is_marked(checkpoint_dir.parent):
        shutil.rmtree(cut_short, ignore_errors=True)  # half a checkpoint: never resumed from, and it takes space
    committed = checkpoints.scan_names(checkpoint_dir)[0]
    previous = (f"the previous checkpoint {committed[-1]} is intact and complete, and a rerun resumes from it"
                if committed else "no earlier checkpoint exists, so a rerun starts from step 0")
    return CheckpointWriteFailed(
        f"could not {what} {step} ({reason}); {previous}",
        fix=f"free disk space under {checkpoint_dir.parent} (or lower train.keep_last), then run the same command",
    )


def diverged(stop, cfg, run_dir: Path) -> UserError:
    """The message for a run stopped on NaN or Inf gradients: where, what was kept, what to try."""
    from lora_ft.errors import TrainingDiverged

    committed = checkpoints.scan_names(run_dir / artifacts.CHECKPOINT_DIR)[0]
    kept = f"the last checkpoint is {committed[-1]}" if committed else "no checkpoint had been saved yet"
    skipped = f"; {len(stop.skipped)} earlier step(s) were skipped ({stop.skipped})" if stop.skipped else ""
    return TrainingDiverged(
        f"the gradients at step {stop.step} are NaN or Inf: training stopped before that optimizer step, so no "
        f"weight took the bad update; {kept}{skipped}",
        fix=f"lower train.learning_rate (now {cfg.train.learning_rate:g}) or train.max_grad_norm (now "
        f"{cfg.train.max_grad_norm:g}); check the data with `lora-ft data`; on a GPU try model.dtype: bfloat16 "
        "rather than float16; or set train.nonfinite: skip to skip such steps",
    )


@contextmanager
def translated(checkpoint_dir: Path, trainer, cfg) -> Iterator[None]:
    """Training's failures as the user's messages: divergence, a checkpoint or log that did not fit on disk."""
    from lora_ft.training import CheckpointNoSpace, NonFiniteGradients

    try:
        yield
    except NonFiniteGradients as exc:
        raise diverged(exc, cfg, checkpoint_dir.parent) from None
    except CheckpointNoSpace as exc:
        raise checkpoint_write_failed(checkpoint_dir, exc.step, f"{exc.needed / 2**20:,.0f} MiB needed, "
                                      f"{exc.free / 2**20:,.0f} MiB free") from None
    except Exception as exc:
        step = trainer.state.global_step
        if checkpoints.is_cut_short(checkpoint_dir / f"checkpoint-{step}"):
            raise checkpoint_write_failed(checkpoint_dir, step, str(exc)) from exc
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):  # e.g. the metrics log
            raise checkpoint_write_failed(checkpoint_dir, step, str(exc),
                                          what=f"write {exc.filename or 'a file'} after step") from exc
        raise
