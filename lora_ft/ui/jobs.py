"""Training started from the page: the same ``lora-ft train`` command a person would type, in its own process.

A job is a ``lora-ft train CONFIG`` process whose output goes to a log file beside the runs
(``RUNS_DIR/.lora-ft-ui/logs/NAME.log``). Stopping sends it SIGTERM, as ``kill`` would: the run commits a checkpoint
and exits with 143, and resuming runs the same command again, which continues from that checkpoint. A run that a
terminal started (not the page) is stopped the same way, through the pid its lock names.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from lora_ft.errors import UserError
from lora_ft.rundir import artifacts, lock

UI_DIR = ".lora-ft-ui"  # the page's own files inside the runs folder: the configs its form wrote, the jobs' logs
EXIT_MEANING = {0: "finished", 2: "stopped: the config, data or files need a fix (the error is below)",
                3: "stopped: the loss became NaN or Inf (the error says what to try)",
                4: "stopped: a checkpoint could not be written (the previous one is intact)",
                130: "stopped by Ctrl-C after saving a checkpoint: resume continues from it",
                143: "stopped after saving a checkpoint: resume continues from it"}


def ui_dir(runs_dir: Path, part: str) -> Path:
    folder = Path(runs_dir) / UI_DIR / part
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def config_path(runs_dir: Path, name: str) -> Path:
    """Where the form writes the config of the run called ``name``."""
    return ui_dir(runs_dir, "configs") / f"{name}.yaml"


def log_path(runs_dir: Path, name: str) -> Path:
    return ui_dir(runs_dir, "logs") / f"{name}.log"


@dataclass
class Job:
    name: str
    run_dir: Path
    config: Path
    log: Path
    process: subprocess.Popen

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def outcome(self) -> str:
        code = self.process.poll()
        if code is None:
            return "running"
        return EXIT_MEANING.get(code, f"failed (exit code {code}): see the log below")


def log_tail(path: Path, lines: int = 30) -> str:
    """The log's last lines as a terminal would show them (a progress bar's redrawn line once)."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    shown = [line.rsplit("\r", 1)[-1] for line in text.splitlines()]
    return "\n".join(shown[-lines:])


class Jobs:
    """The training processes this page started, by run name (one at a time per run directory: the run's lock
    refuses a second writer anyway, with the first one's pid)."""

    def __init__(self, runs_dir: Path) -> None:
        self.runs_dir = Path(runs_dir)
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()

    def get(self, name: str) -> Job | None:
        return self._jobs.get(name)

    def start(self, name: str, config: Path, run_dir: Path) -> Job:
        """Run ``lora-ft train CONFIG`` (resuming when the run has a checkpoint, as the command does)."""
        with self._lock:
            current = self._jobs.get(name)
            if current is not None and current.running:
                raise UserError(f"{name} is already training here (pid {current.process.pid})",
                                fix="wait for it to finish, or stop it first")
            log = log_path(self.runs_dir, name)
            env = dict(os.environ, PYTHONUNBUFFERED="1")
            with open(log, "a", encoding="utf-8") as out:
                out.write(f"$ lora-ft train {config}\n")
                out.flush()
                process = subprocess.Popen([sys.executable, "-m", "lora_ft", "train", str(config)],
                                           stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                           env=env, start_new_session=True)
            job = Job(name, Path(run_dir), Path(config), log, process)
            self._jobs[name] = job
            return job

    def resume(self, name: str, run_dir: Path) -> Job:
        """Train the run on from its newest checkpoint: the config the form wrote for it, else the run's own
        resolved ``config.yaml`` (itself a valid config naming this run directory)."""
        config = config_path(self.runs_dir, name)
        if not config.is_file():
            config = Path(run_dir) / artifacts.CONFIG_FILE
        if not config.is_file():
            raise UserError(f"{run_dir} has no config.yaml to resume from", fix="start it again from its config")
        return self.start(name, config, run_dir)

    def stop(self, name: str, run_dir: Path) -> str:
        """SIGTERM to the process training the run: the one this page started, else the lock's holder on this
        machine. It saves a checkpoint and exits; the page shows when."""
        job = self._jobs.get(name)
        if job is not None and job.running:
            os.killpg(job.process.pid, signal.SIGTERM)  # the command and what it started (data workers)
            return f"sent SIGTERM to {name} (pid {job.process.pid}): it saves a checkpoint, then stops"
        holder = lock.holder(run_dir)
        if holder is None:
            raise UserError(f"{name} is not training", fix="nothing to stop")
        import socket

        if holder.get("host") != socket.gethostname():
            raise UserError(f"{name} is training on another machine ({holder.get('host')}, pid {holder.get('pid')})",
                            fix="stop it there (kill -TERM PID): a page stops only processes of this machine")
        os.kill(int(holder["pid"]), signal.SIGTERM)
        return f"sent SIGTERM to {name} (pid {holder['pid']}): it saves a checkpoint, then stops"
