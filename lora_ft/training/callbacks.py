"""What runs inside the training loop: progress, the metrics log, the NaN guard, the planned end, checkpoints and
signals. Each is made once by the training command, handed to the trainer, and read back from where it was made."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from transformers import TrainerCallback

from lora_ft import console, distributed

# what an RL run's progress says of its sampled answers: (logged key, shown name, format)
SAMPLING_FIGURES = (("reward", "reward", ".3f"), ("completions/mean_length", "length", ".0f"),
                    ("reward_std", "reward std", ".3f"), ("completions/clipped_ratio", "cut", ".0%"),
                    ("kl", "kl", ".4f"))


class ProgressBar(TrainerCallback):
    """Training progress with the latest loss and non-pad tokens per second.

    On a terminal it is a live progress bar; in a log file (no terminal) it is one line per logging step.
    """

    def __init__(self, live: bool | None = None) -> None:
        self.live = sys.stderr.isatty() if live is None else live
        self.bar = None
        self.started = 0.0
        self.tokens_at_start = 0
        self.step_at_start = 0
        self.last_loss: float | None = None
        self.sampling: dict[str, float] = {}  # an RL run's last reward, answer length, share cut, KL
        self.reports = True  # only the main process reports

    def _rate(self, state) -> float:
        return (state.num_input_tokens_seen - self.tokens_at_start) / max(time.perf_counter() - self.started, 1e-9)

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = time.perf_counter()
        self.tokens_at_start = state.num_input_tokens_seen
        self.step_at_start = state.global_step
        self.reports = state.is_world_process_zero
        if self.live and self.reports:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc="training", unit="step",
                            dynamic_ncols=True, file=sys.stderr)

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is None:
            return
        postfix = {"tok/s": f"{self._rate(state):.0f}"}
        if self.last_loss is not None:
            postfix["loss"] = f"{self.last_loss:.3f}"
        for key, name, form in SAMPLING_FIGURES[:2]:
            if self.sampling.get(key) is not None:
                postfix[name] = f"{self.sampling[key]:{form}}"
        self.bar.set_postfix(postfix, refresh=False)
        self.bar.update(state.global_step - self.bar.n)

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        if "loss" in logs:
            self.last_loss = float(logs["loss"])
        self.sampling.update({key: logs[key] for key, _, _ in SAMPLING_FIGURES if key in logs})
        if "eval_reward" in logs and self.started and state.global_step:
            self._write(f"step {state.global_step}: held-out reward {logs['eval_reward']:.3f}")
        if "eval_loss" in logs and self.started:  # evaluations before training are reported by the caller
            rewards = "".join(f", {name} {logs[key]:{form}}" for key, name, form in (
                ("eval_rewards/accuracies", "reward accuracy", ".1%"), ("eval_rewards/margins", "margin", "+.3f"))
                if key in logs)
            self._write(f"step {state.global_step}: eval loss {logs['eval_loss']:.4f}{rewards}")
        elif "loss" in logs and not self.live:
            elapsed = time.perf_counter() - self.started
            left = elapsed / max(state.global_step - self.step_at_start, 1) * (state.max_steps - state.global_step)
            self._write(f"step {state.global_step}/{state.max_steps}  loss {self.last_loss:.4f}  "
                        f"lr {logs.get('learning_rate', 0):.2e}  {self._rate(state):.0f} tok/s  "
                        + "".join(f"{name} {logs[key]:{form}}  " for key, name, form in SAMPLING_FIGURES
                                  if logs.get(key) is not None) +
                        f"elapsed {elapsed / 60:.1f} min, about {left / 60:.1f} min left")

    def _write(self, line: str) -> None:
        if not self.reports:
            return
        if self.bar is not None:
            self.bar.write(line, file=sys.stderr)
        else:
            console.status(line)

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class NonFiniteGradients(Exception):
    def __init__(self, step: int, skipped: list[int]) -> None:
        super().__init__(f"non-finite gradients at step {step}")
        self.step = step
        self.skipped = skipped


class NonFiniteGuard(TrainerCallback):
    """Checks the trainable gradients before every optimizer step; NaN or Inf never reaches the weights.

    ``stop`` raises :class:`NonFiniteGradients` (the optimizer step does not happen); ``skip`` drops the step's
    gradients, so the optimizer leaves the weights alone, up to ``max_skips`` times.
    """

    def __init__(self, mode: str = "stop", max_skips: int = 10) -> None:
        self.mode = mode
        self.max_skips = max_skips
        self.skipped: list[int] = []

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        import torch

        params = [p for p in model.parameters() if p.requires_grad and p.grad is not None]
        # one host synchronisation for all gradients (not one per tensor: a 1B model's LoRA has about 224)
        if not params or bool(torch.stack([torch.isfinite(p.grad).all() for p in params]).all()):
            return
        step = state.global_step + 1
        if self.mode == "skip" and len(self.skipped) < self.max_skips:
            for p in params:
                p.grad = None
            self.skipped.append(step)
            return
        raise NonFiniteGradients(step, list(self.skipped))


class LogHistory(TrainerCallback):
    """Keeps every logged record, with a timestamp, and appends it to the run's metrics file as it comes, so a run
    that is killed still has its curve up to the kill."""

    def __init__(self, path: Path | None = None, records: list[dict] | None = None) -> None:
        self.path = path
        self.records: list[dict] = list(records or [])

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs:
            return
        record = {"step": state.global_step, "time": time.time(), **logs}
        self.records.append(record)
        if self.path is not None and state.is_world_process_zero:
            with self.path.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(record, default=str) + "\n")


class TrainingAlreadyComplete(Exception):
    """Resumed from the checkpoint of the run's last step: there is nothing left to train."""


class StopAtPlannedEnd(TrainerCallback):
    """Never trains past the planned last step.

    The trainer checks ``max_steps`` only after a step; resumed from a checkpoint of the last step that falls
    partway through an epoch, it would run one more. Raised before that step's first forward pass, so the weights
    stay exactly those of the checkpoint."""

    def on_step_begin(self, args, state, control, **kwargs):
        if state.max_steps > 0 and state.global_step >= state.max_steps:
            raise TrainingAlreadyComplete()


class CheckpointNoSpace(Exception):
    def __init__(self, step: int, needed: int, free: int) -> None:
        super().__init__(f"not enough disk space for the checkpoint at step {step}")
        self.step, self.needed, self.free = step, needed, free


class StopRequest:
    """SIGTERM / SIGINT while training: the first asks for a checkpoint and a clean stop after the current step;
    a second one stops the process at once (a save it cuts short is never resumed from)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict = {}

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.signum = signum
        console.status(f"\n{signal.Signals(signum).name} received: finishing this step and saving a checkpoint "
                       "(send it again to stop at once)")

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()


class CheckpointKeeper(TrainerCallback):
    """Makes the trainer's checkpoints complete-or-absent, keeps the newest ``keep_last``, and saves on demand.

    - after each save it commits the folder with its manifest and prunes the old ones, with ``commit`` and
      ``prune`` as the run directory hands them in (:func:`lora_ft.rundir.checkpoints.commit` and
      :func:`~lora_ft.rundir.checkpoints.prune`: the run directory's layout is not the loop's to know);
    - before each save it checks the free space against the last checkpoint's size and stops the run, with the
      previous checkpoint intact, when it would not fit;
    - it asks for a save when ``save_every_minutes`` have passed, and a save and stop when a signal came.
    """

    def __init__(self, checkpoint_dir: Path, fingerprint: dict, keep_last: int, expected_bytes: int,
                 save_every_minutes: float | None = None, stop: StopRequest | None = None,
                 disk_free=lambda path: shutil.disk_usage(path).free, *, commit, prune) -> None:
        self.checkpoint_dir = Path(checkpoint_dir)
        self.commit = commit  # (folder, step, fingerprint) -> the committed checkpoint
        self.prune = prune  # (checkpoint folder, keep_last, best checkpoint or None) -> the folders removed
        self.fingerprint = fingerprint
        self.keep_last = keep_last
        self.expected_bytes = expected_bytes
        self.save_every_seconds = save_every_minutes * 60 if save_every_minutes else None
        self.stop = stop
        self.last_save = time.monotonic()
        self.committed: list[Path] = []
        self.disk_free = disk_free
        self.world = distributed.current_world()

    def on_train_begin(self, args, state, control, **kwargs):
        self.last_save = time.monotonic()

    def on_step_end(self, args, state, control, **kwargs):
        # With several processes every decision is agreed on (one tiny all-reduce), or they would part ways.
        time_due = bool(self.save_every_seconds) and time.monotonic() - self.last_save >= self.save_every_seconds
        signalled = self.stop is not None and self.stop.signum is not None
        time_due, signalled = distributed.agree([time_due, signalled], self.world)
        if time_due:
            control.should_save = True
        if signalled:
            control.should_save = True
            control.should_training_stop = True
        if control.should_save:
            needed = int(self.expected_bytes * 1.1) + 16 * 2**20
            free = self.disk_free(self.checkpoint_dir.parent) if state.is_world_process_zero else needed
            (short,) = distributed.agree([free < needed], self.world)
            if short:
                raise CheckpointNoSpace(state.global_step, needed, free)
        return control

    def on_save(self, args, state, control, **kwargs):
        self.last_save = time.monotonic()
        if not state.is_world_process_zero:
            return
        folder = self.checkpoint_dir / f"checkpoint-{state.global_step}"
        committed = self.commit(folder, state.global_step, self.fingerprint)
        self.expected_bytes = max(self.expected_bytes, committed.size)
        self.committed.append(folder)
        self.prune(self.checkpoint_dir, self.keep_last, state.best_model_checkpoint)


@dataclass
class LoopCallbacks:
    """The callbacks of one training run: made once by the training command, handed to the trainer, and read
    back from here once it is done (never searched for among the trainer's callbacks)."""

    progress: ProgressBar
    history: LogHistory
    guard: NonFiniteGuard
    keeper: CheckpointKeeper
    stop: StopRequest
    trackers: list = field(default_factory=list)  # the trackers' own callbacks (W&B's), written and read by them

    def for_trainer(self) -> list:
        return [self.progress, self.history, self.guard, self.keeper, *self.trackers]


def loop_callbacks(cfg, run_dir, compared_config: dict, data_fingerprint: dict, processes: int,
                   tracker_callbacks: list) -> LoopCallbacks:
    """The callbacks of one run in ``run_dir`` (a :class:`lora_ft.rundir.session.TrainingRunDir`): checkpoints carry
    what a resume compares (config, data, processes); the metrics log goes on from the steps kept."""
    stop = StopRequest()
    keeper = CheckpointKeeper(run_dir.checkpoint_dir,
                              {"config": compared_config, "data": data_fingerprint, "processes": processes},
                              cfg.train.keep_last, run_dir.checkpoint_bytes, cfg.train.save_every_minutes, stop,
                              commit=run_dir.commit_checkpoint, prune=run_dir.prune_checkpoints)
    return LoopCallbacks(progress=ProgressBar(), history=LogHistory(run_dir.metrics_file, run_dir.records),
                         guard=NonFiniteGuard(cfg.train.nonfinite, cfg.train.max_skipped_steps), keeper=keeper,
                         stop=stop, trackers=list(tracker_callbacks))
