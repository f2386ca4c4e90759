"""The cache folder's housekeeping: the lock one writer of an entry holds, the temporary folders entries are written
in, damaged entries set aside, and the clean-up of old ones.

``data.cache_dir`` may point into a folder that also holds the user's own files, so nothing here ever removes or
moves a folder that is not provably one of the cache's own: an entry (named by a key, its meta file naming the same
key), or a temporary folder of a writer (``.writing-*``, ``.damaged-*``).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from lora_ft import console
from lora_ft.errors import UserError
from lora_ft.tokenized.keys import is_key

META_FILE = "meta.json"
UNUSED_DAYS = 30  # entries not opened for this long are removed when a new one is written
STALE_TEMP_HOURS = 24  # temporary folders of writers that died


@contextmanager
def writing_lock(root: Path, key: str):
    """One process at a time tokenizes the same data (the ranks of a distributed run, two commands at once):
    the others wait, then read the entry it wrote. Needs a writable cache folder."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        handle = (root / f".{key}.lock").open("a")
    except OSError as exc:
        raise unwritable(root, exc) from exc
    try:
        import fcntl
    except ImportError:  # not a POSIX system: writers rely on the atomic rename alone
        fcntl = None
    with handle:
        if fcntl is not None:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                console.notice("tokenized data: another process is tokenizing the same data; waiting for it")
                fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def temporary_folder(root: Path | None) -> Path:
    """A new folder to write an entry in: under the cache root (renamed into place once whole), or, not cached,
    a temporary folder removed when the process ends."""
    if root is None:
        import atexit

        folder = Path(tempfile.mkdtemp(prefix="lora-ft-tokens-"))
        atexit.register(shutil.rmtree, folder, True)
        return folder
    try:
        return Path(tempfile.mkdtemp(prefix=".writing-", dir=root))  # the root exists: its lock is held
    except OSError as exc:
        raise unwritable(root, exc) from exc


def unwritable(root: Path, exc: OSError) -> UserError:
    return UserError(f"cannot create the tokenized data cache in {root}: {exc.strerror or exc}",
                     fix="set data.cache_dir to a writable folder, or pass --no-cache", settings=("data.cache_dir",))


def is_entry(path: Path) -> bool:
    """A folder this cache wrote: named by a key, its meta file naming the same key (data.cache_dir may point
    into a folder that also holds the user's own files; those are never touched)."""
    try:
        return is_key(path.name) and json.loads((path / META_FILE).read_text()).get("key") == path.name
    except (OSError, ValueError, AttributeError):
        return False


def mark_used(entry: Path) -> None:
    """The entry's last use, for the clean-up: its meta file's time. Skipped in a folder this process cannot write
    (a read-only cache is read all the same)."""
    try:
        os.utime(entry / META_FILE)
    except OSError:
        pass


def set_aside(entry: Path) -> None:
    """Remove a damaged entry of the cache's own (:func:`is_entry`): renamed out of the way at once (a reader
    that opens the key next finds nothing), then deleted."""
    if not is_entry(entry):
        return
    aside = entry.with_name(f".damaged-{entry.name}-{os.getpid()}")
    try:
        entry.rename(aside)
    except OSError:
        return  # gone already: another process set it aside
    shutil.rmtree(aside, ignore_errors=True)


def clean(root: Path, keep: Path) -> None:
    """Remove entries unused for :data:`UNUSED_DAYS`, and the temporary folders and locks of writers that died;
    nothing else in the folder."""
    now = time.time()
    for path in root.iterdir():
        try:
            if path.name.startswith(".") and path.name.endswith(".lock") and is_key(path.name[1:-len(".lock")]):
                entry = root / path.name[1:-len(".lock")]
                if not entry.exists() and now - path.stat().st_mtime > STALE_TEMP_HOURS * 3600:
                    path.unlink(missing_ok=True)
                continue
            if path == keep or not path.is_dir():
                continue
            if path.name.startswith((".writing-", ".damaged-")):
                if now - path.stat().st_mtime > STALE_TEMP_HOURS * 3600:
                    shutil.rmtree(path, ignore_errors=True)
            elif is_entry(path) and now - (path / META_FILE).stat().st_mtime > UNUSED_DAYS * 86400:
                shutil.rmtree(path, ignore_errors=True)
        except OSError:
            continue
