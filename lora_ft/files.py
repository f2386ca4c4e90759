"""Small file helpers shared by the steps: content hashes, all-or-nothing writes, output folders."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lora_ft.errors import UserError
from lora_ft import console


HASH_BLOCK = 1 << 20  # bytes read at a time for a hash: 1-2 MB measured fastest (scripts/bench_hash.py)


def _hash_rest(fh, digest) -> None:
    """Feed ``digest`` every byte from the file's position to its end, in :data:`HASH_BLOCK` blocks."""
    block = bytearray(HASH_BLOCK)
    view = memoryview(block)
    while count := fh.readinto(block):
        digest.update(view[:count])


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's contents, read now. Never taken from the file's size, times or inode: a copy that
    keeps them (``cp -p``) or a rewrite that puts them back changes the contents without changing any of them."""
    digest = hashlib.sha256()
    with Path(path).open("rb", buffering=0) as fh:
        _hash_rest(fh, digest)
    return digest.hexdigest()


class HashedFile(io.RawIOBase):
    """A file read for parsing whose bytes are hashed (SHA-256) as they are read, so the hash is of exactly the
    bytes parsed, whatever happens to the file meanwhile. Closing it (as a reader does when it is done) keeps the
    file open for :meth:`finish`, which hashes what was left unread and gives the whole file's hash;
    :meth:`release` closes it for good."""

    def __init__(self, path: Path):
        super().__init__()
        self.path = Path(path)
        self._file = self.path.open("rb", buffering=0)
        self._digest = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        count = self._file.readinto(buffer)
        if count:
            self._digest.update(memoryview(buffer)[:count])
        return count

    def finish(self) -> str:
        _hash_rest(self._file, self._digest)
        self.release()
        return self._digest.hexdigest()

    def release(self) -> None:
        self._file.close()


def write_text_atomic(path: Path, text: str) -> None:
    """Write a text file so that readers see the old content or the new, never half of it."""
    path = Path(path)
    if path.is_symlink():
        path = path.resolve()  # replace the file the link points to, never the link itself
    if path.exists() and not path.is_file():  # a device, a pipe (/dev/stdout): write into it, never replace it
        with path.open("w", encoding="utf-8") as fh:
            fh.write(text)
        return
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())  # on disk before the rename, so a power cut never leaves an empty file in its place
    os.replace(tmp, path)


def check_output_dir_free(out_dir: Path) -> None:
    """Refuse an output folder that holds anything: lora-ft never writes over a user's files."""
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise UserError(f"{out_dir} already exists and is not empty; lora-ft does not write over it",
                        fix="choose a new --out directory, or remove the old one")
    ancestor = out_dir.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
        raise UserError(f"cannot write to {out_dir}: {ancestor} is not a writable directory",
                        fix="choose a writable --out directory")


PARTIAL_LOCK = ".lora-ft-partial.lock"  # held while a staging folder is written; free once its writer is gone


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def remove_abandoned_staging(out_dir: Path) -> list[Path]:
    """Delete staging folders of ``out_dir`` whose writer is gone (killed mid-write): the ones lora-ft made (they
    hold its partial-lock file) and whose lock nobody holds. A folder being written by a live process is kept."""
    import fcntl

    out_dir = Path(out_dir)
    removed = []
    for folder in out_dir.parent.glob(f".{out_dir.name}.partial-*"):
        lock = folder / PARTIAL_LOCK
        if not folder.is_dir() or not lock.is_file():
            continue  # not one of ours, or its writer has not taken the lock yet
        try:
            fd = os.open(lock, os.O_RDONLY)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # its writer is still at work
        finally:
            os.close(fd)
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
        console.say(f"note: removed {folder.name}, left by an earlier write of {out_dir.name} that was cut short")
    return removed


def give_umask_permissions(folder: Path) -> None:
    """Every file and folder under ``folder`` gets the permissions the user's umask gives new files: some writers
    (safetensors, temporary files renamed into place) create them private (0600), which keeps a serving engine
    running as another user out."""
    mask = _umask()
    for path in [folder, *Path(folder).rglob("*")]:
        if path.is_symlink():
            continue
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~mask)


@contextmanager
def staged_directory(out_dir: Path) -> Iterator[Path]:
    """A temporary folder beside ``out_dir`` that becomes ``out_dir`` when the block completes.

    If the block fails (or is interrupted), the temporary folder is removed: nothing half-written is left. A
    process killed outright (``kill -9``) cannot clean up; its folder is removed by the next write of ``out_dir``.
    The result, folder and files, gets the permissions the user's umask gives (``mkdtemp``'s private 0700, or
    safetensors' 0600 files, would keep a serving engine running as another user out).
    """
    import fcntl

    out_dir = Path(out_dir)
    check_output_dir_free(out_dir)
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        remove_abandoned_staging(out_dir)
        staging = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.partial-"))
        lock_fd = os.open(staging / PARTIAL_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise UserError(f"cannot write to {out_dir.parent}: {exc.strerror or exc}",
                        fix="choose a writable --out directory") from exc
    fcntl.flock(lock_fd, fcntl.LOCK_EX)
    try:
        yield staging
        (staging / PARTIAL_LOCK).unlink()
        give_umask_permissions(staging)
        if out_dir.exists():
            out_dir.rmdir()  # empty: checked above
        staging.rename(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        os.close(lock_fd)
