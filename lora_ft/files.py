"""Small file helpers shared by the steps: content hashes, all-or-nothing writes, output folders."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lora_ft.errors import UserError


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_text_atomic(path: Path, text: str) -> None:
    """Write a text file so that readers see the old content or the new, never half of it."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
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


@contextmanager
def staged_directory(out_dir: Path) -> Iterator[Path]:
    """A temporary folder beside ``out_dir`` that becomes ``out_dir`` when the block completes.

    If the block fails (or is interrupted), the temporary folder is removed: nothing half-written is left.
    """
    out_dir = Path(out_dir)
    check_output_dir_free(out_dir)
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.partial-"))
    except OSError as exc:
        raise UserError(f"cannot write to {out_dir.parent}: {exc.strerror or exc}",
                        fix="choose a writable --out directory") from exc
    try:
        yield staging
        if out_dir.exists():
            out_dir.rmdir()  # empty: checked above
        staging.rename(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
