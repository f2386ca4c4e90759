"""``lora-ft train CONFIG --nproc N``: the config checked once, the processes started, and their failure told once.

The launching process checks the config as every process would (the checks ``lora-ft validate`` runs, the settings
resolved for this machine, and the refusals of :func:`lora_ft.distributed.check_supported` for N processes), so a
fault is told once, before any process starts. It then runs torchrun's own agent in this process
(``torch.distributed.run``'s parser and ``elastic_launch``: exactly what the ``torchrun`` command runs), so that a
failed process arrives here as an exception, never as torchrun's traceback on the screen.

Each process that stops on a fault lora-ft knows (a :class:`UserError`: bad data, an interrupted run, a full disk)
writes its one-screen message to a report of its own (``$LORA_FT_FAILURE_DIR/rank-N.json``) instead of printing it.
The launcher prints the report written first (the cause; the others were stopped because of it), once, and exits
with that process's code: 2 for bad input, 143 for SIGTERM, as in one process. A process that died without a report
(killed by a signal, or a bug whose traceback it printed itself) is named with its signal or exit code.

In the processes, :func:`peers_lost` turns a collective that failed because another process died or stopped
answering (within ``distributed.timeout_minutes``) into a message that says where the run resumes from.
"""

from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager
from pathlib import Path

from lora_ft import console, distributed
from lora_ft.errors import EXIT_FAILURE, EXIT_SIGNAL_BASE, UserError

FAILURE_DIR = "LORA_FT_FAILURE_DIR"
LAUNCH_FLAGS = "LORA_FT_LAUNCH_FLAGS"  # the launcher's own flags, for the processes' "run the same command" hints
PEERS_LOST = "another process of this run stopped or stopped answering"


class ProcessFailed(UserError):
    """A launched process's failure, told as that process told it (its one-screen message), with its exit code."""

    def __init__(self, text: str, exit_code: int) -> None:
        super().__init__(text.splitlines()[0] if text else "a process failed")
        self.text = text
        self.exit_code = exit_code

    def render(self, max_problems: int = 15) -> str:
        return self.text


def report_failure(text: str, exit_code: int) -> bool:
    """In a process that :func:`launch` started: leave this process's one-screen failure for the launcher to tell
    (the caller prints nothing). False elsewhere (one process, or one that torchrun itself started): print it."""
    folder = os.environ.get(FAILURE_DIR)
    if not folder or not Path(folder).is_dir():
        return False
    path = Path(folder) / f"rank-{int(os.environ.get('RANK', 0))}.json"
    try:
        path.with_suffix(".tmp").write_text(json.dumps({"text": text, "exit_code": exit_code, "time": time.time()}))
        os.replace(path.with_suffix(".tmp"), path)
    except OSError:
        return False
    return True


def check_before_launch(loaded, nproc: int):
    """Every check a process would make before it loads anything, made once here for ``nproc`` processes; the
    config resolved for this machine."""
    from lora_ft.config import resolve

    resolved = resolve(loaded)
    distributed.check_supported(resolved.config, distributed.World(size=nproc, launched=True))
    return resolved.config


def launch_training(args, loaded) -> int:
    """``lora-ft train CONFIG --nproc N [--nnodes M --rdzv-endpoint HOST:PORT]``: the same command in N processes
    on this machine, which is one of M that meet at HOST:PORT."""
    if args.nproc < 1:
        raise UserError(f"--nproc {args.nproc}: the number of processes must be at least 1", fix="--nproc 2")
    if distributed.current_world().launched:
        raise UserError("--nproc was given inside a launcher that already started processes",
                        fix="drop --nproc when running under torchrun or accelerate launch")
    if args.nnodes > 1 and not args.rdzv_endpoint:
        raise UserError(f"--nnodes {args.nnodes} needs the address where the machines meet",
                        fix="add --rdzv-endpoint HOST:PORT (the first machine's address and a free port) to the "
                        "command on every machine")
    cfg = check_before_launch(loaded, args.nproc * args.nnodes)
    argv = [args.config, *(a for o in args.overrides for a in ("--set", o)), "--resume", args.resume,
            *(["--force-resume"] if args.force_resume else []), *(["--no-cache"] if args.no_cache else [])]
    flags = f"--nproc {args.nproc}" + (f" --nnodes {args.nnodes} --rdzv-endpoint {args.rdzv_endpoint}"
                                       if args.nnodes != 1 else "")
    os.environ[LAUNCH_FLAGS] = flags  # the processes inherit it
    try:
        return _launch_for(args, argv, cfg)
    finally:
        os.environ.pop(LAUNCH_FLAGS, None)


def _launch_for(args, argv: list[str], cfg) -> int:
    if args.nnodes == 1:
        return launch(argv, args.nproc)
    import hashlib

    # named after the output directory: the same on every machine (a shared file system), another for another run
    run_id = "lora-ft-" + hashlib.sha256(cfg.output_dir.encode()).hexdigest()[:16]
    return launch(argv, args.nproc, ["--nnodes", str(args.nnodes), "--rdzv-backend", "c10d",
                                     "--rdzv-endpoint", args.rdzv_endpoint, "--rdzv-id", run_id])


def launch(train_argv: list[str], nproc: int, rendezvous: list[str] | None = None) -> int:
    """Run ``lora-ft train`` in ``nproc`` processes on this machine through torchrun's agent (``rendezvous``:
    torchrun's options for meeting other machines; none: this machine alone); 0 when every process finished, else
    raise the failure as the failing process told it."""
    import logging
    import tempfile
    import uuid

    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.elastic.rendezvous.api import RendezvousError
    from torch.distributed.launcher.api import elastic_launch

    command = [*(rendezvous or ["--standalone"]), f"--nproc-per-node={nproc}", "-m", "lora_ft", "train", *train_argv]
    where = f" on this machine, one of {rendezvous[1]}" if rendezvous else ""
    console.say(f"launching {nproc} process{'es' if nproc > 1 else ''}{where}: torchrun {' '.join(command)}")
    options = torchrun.parse_args(command)
    if not rendezvous:  # what --standalone means (torch/distributed/run.py, run()): this machine alone, a free port
        options.rdzv_backend, options.rdzv_endpoint, options.rdzv_id = "c10d", "localhost:0", uuid.uuid4().hex
    for name in [n for n in logging.root.manager.loggerDict if n.startswith("torch.distributed")]:
        logging.getLogger(name).setLevel(logging.CRITICAL)  # the agent's own log: what fails is told below
    config, entrypoint, entry_args = torchrun.config_from_args(options)
    with tempfile.TemporaryDirectory(prefix="lora-ft-processes-") as reports:
        os.environ[FAILURE_DIR] = reports  # the processes inherit it
        try:
            elastic_launch(config, entrypoint)(*entry_args)
            return 0
        except ChildFailedError as exc:
            raise _first_failure(Path(reports), {r: f.exitcode for r, f in exc.failures.items()}) from None
        except (SignalException, KeyboardInterrupt) as exc:  # the processes were sent the same signal, and saved
            signum = int(getattr(exc, "sigval", 2))
            raise _first_failure(Path(reports), {}, signum) from None
        except RendezvousError as exc:  # another machine's launcher, which held the meeting point, stopped
            lost = ProcessFailed(f"error: {PEERS_LOST}: this machine lost the others' meeting point ({exc})\n  fix: "
                                 "find why in the other machines' output; then start the same command on every "
                                 "machine: it resumes from the newest complete checkpoint", EXIT_FAILURE)
            raise _first_failure(Path(reports), {}, everyone=True, otherwise=lost) from None
        finally:
            os.environ.pop(FAILURE_DIR, None)


def _first_failure(reports: Path, exit_codes: dict[int, int], signum: int | None = None, everyone: bool = False,
                   otherwise: ProcessFailed | None = None) -> ProcessFailed:
    """The failure to tell. ``exit_codes``: the processes torchrun's agent found failed before it stopped the
    others (the cause). Their own reports come first (the earliest; after a signal, the first process's, which
    knows what was saved), a lost peer's last (it is what another process's death looks like from outside); a
    process that died without a report is named with its signal or exit code. ``everyone``: every report counts
    (the agent itself failed, and found no process failed); ``otherwise``: the failure when none reported."""
    written = {}
    for path in reports.glob("rank-*.json"):
        try:
            written[int(path.stem.split("-")[1])] = json.loads(path.read_text())
        except (OSError, ValueError, IndexError):
            continue
    causes = {rank: report for rank, report in written.items()
              if rank in exit_codes or signum is not None or everyone}
    told = {rank: report for rank, report in causes.items() if PEERS_LOST not in report["text"]}
    if told:  # a signal reached every process: the first process's report says what it saved
        first = told[min(told)] if signum is not None else min(told.values(), key=lambda report: report["time"])
        return ProcessFailed(first["text"], int(first["exit_code"]))
    silent = {rank: code for rank, code in exit_codes.items() if rank not in written}
    if silent:
        # a killed process first, SIGKILL (the out-of-memory killer, a preemption) before any other signal
        rank, code = min(silent.items(), key=lambda item: (item[1] >= 0, item[1] != -9, item[0]))
        if code < 0:
            import signal

            name = signal.Signals(-code).name if -code in signal.valid_signals() else f"signal {-code}"
            why = ("SIGKILL is often the kernel's out-of-memory killer (see `dmesg`; `lora-ft plan` estimates the "
                   "memory); " if code == -9 else "")
            return ProcessFailed(f"error: process {rank} was killed by {name}, and the others were stopped\n  fix: "
                                 f"{why}the same command resumes from the newest complete checkpoint",
                                 EXIT_SIGNAL_BASE - code)
        return ProcessFailed(f"error: process {rank} stopped with exit code {code} (its own output above says why), "
                             "and the others were stopped", code or EXIT_FAILURE)
    if causes:
        first = min(causes.values(), key=lambda report: report["time"])
        return ProcessFailed(first["text"], int(first["exit_code"]))
    if otherwise is not None:
        return otherwise
    signum = signum or 15
    return ProcessFailed(f"stopped: signal {signum} received, and no process reported what it saved\n  fix: the same "
                         "command resumes from the newest complete checkpoint, if one was written",
                         EXIT_SIGNAL_BASE + signum)


@contextmanager
def peers_lost(world: distributed.World, output_dir: str):
    """In a process of a distributed run: a collective that failed because another process died, or did not answer
    within distributed.timeout_minutes, becomes one message that says where the run resumes from."""
    try:
        yield
    except RuntimeError as exc:
        if not world.distributed or not _collective_failure(exc):
            raise
        raise PeersLost(f"{PEERS_LOST} ({_first_line(exc)}), so training cannot go on",
                        fix=_resume_fix(output_dir)) from exc


class PeersLost(UserError):
    """A collective failed: another process died or did not answer in time. Not the user's input: exit code 1."""

    exit_code = EXIT_FAILURE


def _collective_failure(exc: BaseException) -> bool:
    import torch.distributed as dist

    text = str(exc)
    return isinstance(exc, getattr(dist, "DistError", ())) or any(
        mark in text for mark in ("Connection closed by peer", "Connection reset by peer", "Timed out waiting",
                                  "Broken pipe", "NCCL communicator was aborted", "Watchdog caught collective"))


def _first_line(exc: BaseException) -> str:
    """The backend's own words, without its source location or advice: 'Read error [127.0.0.1]:63635:
    Connection reset by peer'."""
    import re

    line = next((part for part in str(exc).splitlines() if part.strip()), type(exc).__name__)
    line = re.sub(r"^\[[^\]]*\.(cc|cpp|h|py):\d+\]\s*", "", line.strip())
    return line.split(". ", 1)[0].rstrip(".")[:160]


def _resume_fix(output_dir: str) -> str:
    from lora_ft.rundir import checkpoints

    folder = Path(output_dir) / "checkpoints"
    newest = checkpoints.newest(folder, tidy=False) if folder.is_dir() else None
    where = (f"it resumes from {newest.path.name}, the newest complete checkpoint" if newest is not None
             else "no checkpoint was written yet, so it starts again")
    return ("find why in the other processes' output (on every machine); then start the same command on every "
            f"machine: {where}")
