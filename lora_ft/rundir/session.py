"""The run directory while a training run holds it: refused if not ours, locked, resumed or begun, sized."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lora_ft import console
from lora_ft.config import dump_config
from lora_ft.files import write_text_atomic
from lora_ft.rundir import artifacts, checkpoints
from lora_ft.rundir import lock as run_lock
from lora_ft.rundir import resume as resume_lib


class TrainingRunDir:
    def __init__(self, path: Path, world) -> None:
        self.path = path
        self.world = world
        self.checkpoint_dir = path / artifacts.CHECKPOINT_DIR
        self.metrics_file = path / artifacts.METRICS_FILE
        self.records: list[dict] = []  # the metrics of the steps a resumed run keeps
        self.checkpoint_bytes = 0  # the expected size of one checkpoint

    # What the training loop's checkpoint keeper calls after each save (the loop sits below the run directory).
    commit_checkpoint = staticmethod(checkpoints.commit)
    prune_checkpoints = staticmethod(checkpoints.prune)

    @classmethod
    @contextmanager
    def held(cls, output_dir: str, resume: str, world) -> Iterator[TrainingRunDir]:
        """Before anything in ``output_dir`` is read or written: refuse a folder that is not ours (reading only),
        then hold the run's lock (creating the folder, its mark first) until the run is done with it. Only the
        main process locks; a run stopped before it wrote its config leaves nothing behind."""
        lock = None
        if world.is_main:
            resume_lib.check_writable_run_dir(output_dir, resume)
            lock = run_lock.RunLock(output_dir, run_lock.command_line(), create=True).acquire()
        try:
            yield cls(Path(output_dir), world)
        finally:
            if lock is not None:
                lock.release(unused=not (Path(output_dir) / artifacts.CONFIG_FILE).exists())

    def choose_start(self, resume: str, compared: dict, force_resume: bool) -> resume_lib.StartPoint:
        """Where training starts (see :mod:`lora_ft.rundir.resume`), checked against the run it continues."""
        start = resume_lib.choose_start(str(self.path), resume, tidy=self.world.is_main)
        if start.checkpoint is not None and start.checkpoint.finished_training:
            console.say(f"{start.checkpoint.path.name} holds the run's last step ({start.step}): nothing is left to "
                        "train; the run is finished from it (adapter, evaluation, manifest)")
        resume_lib.check_same_run(start, compared, None, force_resume)  # the config, before loading anything
        resume_lib.check_same_processes(start, self.world.size, compared["distributed"]["strategy"], force_resume)
        return start

    def begin(self, start: resume_lib.StartPoint, cfg, trainable: int, model_path: str) -> None:
        """Check the disk has room for the run's saves, then write its config (or, resumed, cut the metrics back
        to the checkpoint's step)."""
        tokenizer_size = artifacts.tokenizer_bytes(model_path)
        finished_training = start.checkpoint is not None and start.checkpoint.finished_training
        on_disk = len(checkpoints.scan_names(self.checkpoint_dir)[0]) if start.existing else 0
        artifacts.check_free_space(self.path, artifacts.run_disk_need(trainable, cfg, tokenizer_size,
                                                                      saves_left=not finished_training,
                                                                      checkpoints_on_disk=on_disk))
        self.checkpoint_bytes = artifacts.checkpoint_bytes(trainable, tokenizer_size)
        if not self.world.is_main:
            return  # only the main process writes the run directory
        if start.existing:
            self.records = resume_lib.truncate_metrics(self.path, start.step if start.checkpoint else -1)
            if start.forced_changes:
                write_text_atomic(self.path / artifacts.CONFIG_FILE, dump_config(cfg))
        else:
            write_text_atomic(self.path / artifacts.CONFIG_FILE, dump_config(cfg))  # the folder and its mark exist
