"""Which folders are lora-ft's, and which process may write in one.

A run directory carries a mark, ``.lora-ft-run``, written before anything else when lora-ft creates the directory.
lora-ft deletes, replaces or resumes only inside a marked folder: a folder without the mark is a user's, however
much it looks like a run, and is refused before anything in it is read or written.

One process at a time writes in a run directory. ``lora-ft train`` (and ``eval``, ``merge``, ``export``, which
write into a finished run) hold an exclusive ``flock`` on ``.lora-ft.lock`` for as long as they work. The kernel
releases it when the process ends, however it ends (``kill -9``, an out-of-memory kill), so a crash never leaves
a stale lock. A second process is refused at once, with the holder's pid, host and command. ``flock`` is reliable on
local disks; on a network file system it depends on the server (see docs/troubleshooting.md).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

from lora_ft.errors import UserError

MARK_FILE = ".lora-ft-run"
LOCK_FILE = ".lora-ft.lock"
OUR_FILES = (MARK_FILE, LOCK_FILE)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def is_marked(run_dir: Path) -> bool:
    """True when lora-ft made this folder (it carries the mark)."""
    mark = Path(run_dir) / MARK_FILE
    try:
        return json.loads(mark.read_text(encoding="utf-8")).get("made_by") == "lora-ft"
    except (OSError, ValueError, AttributeError):
        return False


def is_fresh(run_dir: Path) -> bool:
    """Nothing to lose here: the folder is absent, empty, or holds only lora-ft's own mark and lock."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        return True
    if not run_dir.is_dir():
        return False
    names = {p.name for p in run_dir.iterdir()}
    if not names:
        return True
    # ours, and the run never got as far as its config (a start killed while writing it leaves only a temp file)
    return is_marked(run_dir) and not names & {"config.yaml", "checkpoints", "adapter", "manifest.json"} and \
        all(name in OUR_FILES or name.startswith(".") for name in names)


def suggest_new_dir(path: Path | str) -> str:
    """A free sibling name to offer instead of ``path``: ``runs/x`` -> ``runs/x-2`` (or -3, ...)."""
    path = Path(path)
    if path.name in ("", ".."):  # "." and ".." have a name only once resolved
        path = Path(os.path.abspath(path))
    if not path.name:  # "/"
        return "runs/my-run"
    base = path.name
    for n in range(2, 1000):
        candidate = path.with_name(f"{base}-{n}")
        if not candidate.exists():
            return str(candidate)
    return str(path.with_name(f"{base}-{os.getpid()}"))


def write_mark(run_dir: Path) -> bool:
    """Create the mark in ``run_dir`` unless it is there: created whole (linked into place) and never rewritten.
    Returns whether this call created it."""
    from lora_ft import __version__

    mark = Path(run_dir) / MARK_FILE
    if mark.exists():
        return False
    staged = mark.with_name(f"{MARK_FILE}.{os.getpid()}.tmp")
    content = {"made_by": "lora-ft", "version": __version__, "created_at": _now(), "host": socket.gethostname(),
               "pid": os.getpid(),
               "note": "lora-ft made this folder; it deletes or replaces files only in folders with this mark"}
    staged.write_text(json.dumps(content, indent=1) + "\n", encoding="utf-8")
    try:
        os.link(staged, mark)  # fails if another process marked it first: the first mark stays
        return True
    except FileExistsError:
        return False
    finally:
        staged.unlink(missing_ok=True)


def require_mark(run_dir: Path, action: str) -> None:
    """A last guard before lora-ft deletes or replaces anything: the folder must be marked as lora-ft's."""
    if not is_marked(run_dir):
        raise UserError(f"refusing to {action} in {run_dir}: the folder does not carry lora-ft's mark "
                        f"({MARK_FILE}), so lora-ft did not make it",
                        fix="lora-ft only changes folders it created; move the files away or pick another folder")


class RunLock:
    """An exclusive lock on a run directory for one command; a second holder is refused at once.

    Use as a context manager, or ``acquire()`` / ``release()``. ``create``: make the folder (and its mark) when it
    does not exist; otherwise the folder must already be there.
    """

    def __init__(self, run_dir: Path | str, command: str, create: bool = False) -> None:
        self.run_dir = Path(run_dir)
        self.command = command
        self.create = create
        self._fd: int | None = None
        self._created_dir = False
        self._created_mark = False

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> RunLock:
        if self._fd is not None:
            return self
        if self.create:
            try:
                self._created_dir = not self.run_dir.exists()
                self.run_dir.mkdir(parents=True, exist_ok=True)
                self._created_mark = write_mark(self.run_dir)
            except OSError as exc:
                raise UserError(f"cannot write to output_dir {self.run_dir}: {exc.strerror or exc}",
                                fix="choose a writable directory with --set output_dir=...") from exc
        path = self.run_dir / LOCK_FILE
        while True:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise UserError(f"cannot lock {self.run_dir}: {exc.strerror or exc}",
                                fix="check that the directory exists and is writable") from exc
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = _read_holder(fd)
                os.close(fd)
                raise UserError(
                    f"{self.run_dir} is in use by another lora-ft process: {holder}",
                    fix="wait for it to finish, or stop it; two processes must never write one run. (The lock "
                    "goes away by itself when that process ends, even if it is killed.)",
                ) from None
            try:
                if os.stat(path).st_ino == os.fstat(fd).st_ino:
                    break  # still the folder's lock file (not one a finishing holder just removed)
            except FileNotFoundError:
                pass
            os.close(fd)
            if self.create:
                self.run_dir.mkdir(parents=True, exist_ok=True)
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": self.command,
                                   "since": _now()}) + "\n").encode(), 0)
        self._fd = fd
        return self

    def release(self, unused: bool = False) -> None:
        """Let go of the lock. ``unused``: the command wrote nothing in the folder (it stopped before starting);
        the mark and lock this lock created are taken back, and the folder too if this lock created it."""
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)
        except OSError:
            pass
        if unused and self._created_mark and {p.name for p in self.run_dir.iterdir()} <= set(OUR_FILES):
            for name in OUR_FILES:
                (self.run_dir / name).unlink(missing_ok=True)
            if self._created_dir:
                try:
                    self.run_dir.rmdir()
                except OSError:
                    pass
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        info = {}
    if not info:
        return "its details are not written yet (it is starting)"
    return (f"pid {info.get('pid', '?')} on host {info.get('host', '?')}, running `{info.get('command', '?')}` "
            f"since {info.get('since', '?')}")


def holder(run_dir: Path | str) -> dict | None:
    """The process that holds the run's lock now (``pid``, ``host``, ``command``, ``since``), read without taking
    the lock (taking it, even shared, could make a starting ``train`` refuse the run); None when nobody holds it.
    A record left by a process of this host that has ended is no holder (its lock ended with it)."""
    try:
        info = json.loads((Path(run_dir) / LOCK_FILE).read_text(encoding="utf-8") or "null")
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict) or "pid" not in info:
        return None
    if info.get("host") == socket.gethostname():
        try:
            os.kill(int(info["pid"]), 0)
        except (ProcessLookupError, ValueError):
            return None
        except PermissionError:
            pass  # alive, another user's
    return info


def command_line() -> str:
    """This process's command, for the lock's holder record."""
    return " ".join(["lora-ft", *sys.argv[1:]]) if sys.argv else "lora-ft"
