"""Checkpoints that are complete or absent, and choosing where a run resumes.

The trainer writes ``checkpoints/checkpoint-N/``: the adapter (safetensors), optimizer, scheduler, RNG states and
trainer state (data position, step, logs). That folder counts as a checkpoint only once lora-ft has hashed every
file in it and committed ``checkpoint.json`` beside them: written aside, flushed to disk, then renamed into place.
A save cut short (a kill, a crash, a full disk) leaves a folder without that file, which is never resumed from;
a file changed after the commit (truncated, bit-flipped) no longer matches its hash, and the folder is skipped.

Retention keeps the newest ``keep_last`` complete checkpoints and the best one; it counts only complete
checkpoints, so it never deletes the newest complete one because a newer save was cut short.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from lora_ft.rundir import lock as run_lock
from lora_ft.files import file_sha256
from lora_ft import console

MANIFEST = "checkpoint.json"
TRAINER_STATE = "trainer_state.json"  # the trainer's own record: step, planned steps, logs, best checkpoint
NAME = re.compile(r"^checkpoint-(\d+)$")
# Written by the trainer, needed by nobody: a pickle of its arguments. lora-ft's config.yaml is the record.
UNNEEDED = ("training_args.bin",)


@dataclass
class Checkpoint:
    path: Path
    step: int
    manifest: dict = field(default_factory=dict)

    @property
    def fingerprint(self) -> dict:
        return self.manifest.get("fingerprint", {})

    @property
    def size(self) -> int:
        return sum(f["bytes"] for f in self.manifest.get("files", {}).values())

    @property
    def finished_training(self) -> bool:
        """True for the checkpoint of the run's planned last step: resuming from it trains nothing more."""
        try:
            state = json.loads((self.path / TRAINER_STATE).read_text(encoding="utf-8"))
            return 0 < int(state["max_steps"]) <= int(state["global_step"])
        except (OSError, ValueError, KeyError, TypeError):
            return False


@dataclass
class Rejected:
    path: Path
    step: int
    reason: str
    incomplete: bool  # True: no manifest (a save cut short); False: a file no longer matches its manifest


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def commit(path: Path, step: int, fingerprint: dict) -> Checkpoint:
    """Hash every file of a freshly written checkpoint folder and commit its manifest atomically."""
    path = Path(path)
    for name in UNNEEDED:
        (path / name).unlink(missing_ok=True)
    files = {}
    for item in sorted(p for p in path.rglob("*") if p.is_file() and p.name != MANIFEST):
        _fsync(item)
        files[item.relative_to(path).as_posix()] = {"bytes": item.stat().st_size, "sha256": file_sha256(item)}
    manifest = {"format": 1, "step": step, "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "files": files, "fingerprint": fingerprint}
    staged = path / f".{MANIFEST}.tmp"
    with staged.open("w", encoding="utf-8") as fh:
        json.dump(manifest, fh, indent=1)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(staged, path / MANIFEST)
    _fsync(path)
    return Checkpoint(path=path, step=step, manifest=manifest)


def verify(path: Path) -> tuple[Checkpoint | None, str]:
    """The checkpoint in ``path`` if it is complete and intact, else None and what is wrong with it."""
    path = Path(path)
    match = NAME.match(path.name)
    step = int(match.group(1)) if match else -1
    manifest_file = path / MANIFEST
    if not manifest_file.is_file():
        return None, "incomplete: its save never finished (no checkpoint.json)"
    try:
        manifest = json.loads(manifest_file.read_text(encoding="utf-8"))
        files = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return None, "its checkpoint.json is unreadable"
    for name, expected in files.items():
        item = path / name
        if not item.is_file():
            return None, f"{name} is missing"
        if item.stat().st_size != expected["bytes"]:
            return None, f"{name} has {item.stat().st_size:,} bytes, {expected['bytes']:,} were written"
        if file_sha256(item) != expected["sha256"]:
            return None, f"{name} does not match its hash (the file changed after it was written)"
    return Checkpoint(path=path, step=manifest.get("step", step), manifest=manifest), ""


def scan(checkpoint_dir: Path) -> tuple[list[Checkpoint], list[Rejected]]:
    """Every complete checkpoint (oldest first) and every folder that is not one, with the reason."""
    complete, rejected = [], []
    folders = [p for p in Path(checkpoint_dir).glob("checkpoint-*") if p.is_dir() and NAME.match(p.name)]
    for folder in sorted(folders, key=lambda p: int(NAME.match(p.name).group(1))):
        checkpoint, problem = verify(folder)
        if checkpoint is not None:
            complete.append(checkpoint)
        else:
            rejected.append(Rejected(folder, int(NAME.match(folder.name).group(1)), problem,
                                     incomplete=not (folder / MANIFEST).is_file()))
    return complete, rejected


def newest(checkpoint_dir: Path, tidy: bool = True) -> Checkpoint | None:
    """The newest complete checkpoint; folders skipped on the way are named with the reason.

    Skipped folders are cleared out of the way of the resumed run: one whose save never finished is deleted (it
    holds nothing usable), one that fails its hashes is renamed ``checkpoint-N.corrupt`` and kept for a look.
    """
    complete, rejected = scan(checkpoint_dir)
    if tidy and rejected:
        run_lock.require_mark(Path(checkpoint_dir).parent, "remove or rename checkpoint folders")
    for bad in rejected if tidy else []:
        if bad.incomplete:
            shutil.rmtree(bad.path, ignore_errors=True)
            console.say(f"note: {bad.path.name} is {bad.reason}: removed, it is not resumed from")
        else:
            target = bad.path.with_name(f"{bad.path.name}.corrupt")
            n = 1
            while target.exists():
                n += 1
                target = bad.path.with_name(f"{bad.path.name}.corrupt{n}")
            bad.path.rename(target)
            console.say(f"warning: {bad.path.name} is damaged: {bad.reason}; it is skipped and kept as {target.name} "
                "(delete it when you have looked)")
    return complete[-1] if complete else None


def prune(checkpoint_dir: Path, keep_last: int, best: str | None = None) -> list[Path]:
    """Delete complete checkpoints beyond the newest ``keep_last`` (and the best one); return what was deleted."""
    complete, _ = scan_names(checkpoint_dir)
    keep = set(complete[-keep_last:]) if keep_last > 0 else set()
    if complete:
        keep.add(complete[-1])  # never the newest complete one
    if best:
        keep.add(Path(best).resolve())
    deleted = []
    if any(folder not in keep for folder in complete):
        run_lock.require_mark(Path(checkpoint_dir).parent, "delete old checkpoints")
    for folder in complete:
        if folder not in keep:
            shutil.rmtree(folder, ignore_errors=True)
            deleted.append(folder)
    return deleted


def folders(checkpoint_dir: Path) -> list[Path]:
    """Every ``checkpoint-N`` folder, oldest first, whatever its state."""
    return sorted((p.resolve() for p in Path(checkpoint_dir).glob("checkpoint-*") if p.is_dir() and NAME.match(p.name)),
                  key=lambda p: int(NAME.match(p.name).group(1)))


def is_cut_short(folder: Path) -> bool:
    """A checkpoint folder whose save never finished: it is there, without its manifest."""
    folder = Path(folder)
    return folder.is_dir() and NAME.match(folder.name) is not None and not (folder / MANIFEST).is_file()


def scan_names(checkpoint_dir: Path) -> tuple[list[Path], list[Path]]:
    """Committed and uncommitted checkpoint folders by manifest presence alone (cheap: no hashing)."""
    found = folders(checkpoint_dir)
    return [p for p in found if not is_cut_short(p)], [p for p in found if is_cut_short(p)]
