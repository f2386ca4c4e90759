"""Where a run starts: a fresh run directory, the newest complete checkpoint of an interrupted run, or a named one.

``lora-ft train CONFIG`` on a run directory that holds an unfinished run resumes it (``--resume auto``, the
default); ``--resume never`` insists on a fresh directory; ``--resume PATH`` starts from that checkpoint. A resumed
run must be the same run: the config (all but the keys that cannot change the result) and the tokenized data are
compared with what the checkpoint was trained on, and any difference is refused with the list of changes unless
``--force-resume`` is given.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
import os
from pathlib import Path

import yaml

from lora_ft.rundir import artifacts
from lora_ft.rundir import checkpoints
from lora_ft.rundir import lock as run_lock
from lora_ft.config.schema import keys_a_resume_may_change
from lora_ft.errors import Problem, UserError
from lora_ft import console

# Keys that do not change what is trained, as the schema marks them: where files go, trackers, how often to log
# or save, checks.
UNCOMPARED = keys_a_resume_may_change()


@dataclass
class StartPoint:
    """Where this invocation starts: ``checkpoint`` None is step 0; ``existing`` is True when the run directory
    already holds this run's files (an interrupted run), which are then continued rather than created."""

    run_dir: Path
    checkpoint: checkpoints.Checkpoint | None = None
    existing: bool = False
    previous_config: dict | None = None  # what the checkpoint (or the interrupted run) was trained with
    previous_data: dict | None = None
    forced_changes: list[str] = field(default_factory=list)

    @property
    def step(self) -> int:
        return self.checkpoint.step if self.checkpoint else 0


def flatten(value, prefix: str = "") -> dict[str, object]:
    """``{"a": {"b": [1]}}`` -> ``{"a.b.0": 1}``: configs compared key by key."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            out.update(flatten(item, f"{prefix}{key}."))
        return out
    if isinstance(value, list):
        out = {}
        for i, item in enumerate(value):
            out.update(flatten(item, f"{prefix}{i}."))
        return out or {prefix.rstrip("."): []}
    return {prefix.rstrip("."): value}


def compared_config(config: dict) -> dict[str, object]:
    return {k: v for k, v in flatten(config).items() if not any(k == u or k.startswith(u) for u in UNCOMPARED)}


def data_fingerprint(train_ids, train_labels, eval_ids, eval_labels, reports) -> dict:
    """A hash of exactly what is trained on (token ids and labels, in order) and the source files' hashes."""
    import numpy as np

    digest = hashlib.sha256()
    for part in (train_ids, train_labels, eval_ids, eval_labels):
        digest.update(len(part).to_bytes(8, "little"))
        for row in part:
            digest.update(len(row).to_bytes(4, "little"))
            digest.update(np.asarray(row, dtype=np.int64).tobytes())
    return {"tokens_sha256": digest.hexdigest(), "files": {r.path: r.sha256 for r in reports}}


def check_writable_run_dir(output_dir: str, mode: str) -> None:
    """Refuse, reading only, a folder this run may not write in: a user's files, a finished run, a fresh run
    (``never``) that is not fresh. Called before the lock is taken, so nothing is created in a refused folder."""
    run_dir = Path(output_dir)
    if run_dir.is_symlink() and not run_dir.exists():
        target = Path(os.readlink(run_dir))
        raise UserError(f"output_dir {run_dir} is a symbolic link to {target}, which does not exist",
                        fix=f"create the folder it points to (mkdir -p {run_dir.parent / target}), or set output_dir "
                        "to a real directory")
    inside = next((p for p in run_dir.resolve().parents if run_lock.is_marked(p)), None)
    if inside is not None:
        raise UserError(
            f"output_dir {run_dir} lies inside the run directory {inside}; a run inside another run could be "
            "taken for one of its checkpoints or exports",
            fix=f"choose a directory outside {inside}, e.g. --set output_dir={run_lock.suggest_new_dir(inside)}")
    if mode == "never":
        artifacts.check_run_dir_free(output_dir)
    elif mode == "auto":
        if not run_lock.is_fresh(run_dir):
            _refuse_unless_an_unfinished_run(run_dir)
    else:
        _start_from_named_checkpoint(run_dir, Path(mode).expanduser())


def choose_start(output_dir: str, mode: str, tidy: bool = True) -> StartPoint:
    """Decide, before anything heavy is loaded, where this run starts; refuse what would overwrite a run.

    ``tidy``: clear unusable checkpoint folders out of the way (the main process does, holding the run's lock; the
    others only read).
    """
    run_dir = Path(output_dir)
    if mode == "never":
        artifacts.check_run_dir_free(output_dir)
        return StartPoint(run_dir)
    if mode != "auto":
        return _start_from_named_checkpoint(run_dir, Path(mode).expanduser())
    if run_lock.is_fresh(run_dir):
        return StartPoint(run_dir)
    _refuse_unless_an_unfinished_run(run_dir)
    previous = yaml.safe_load((run_dir / artifacts.CONFIG_FILE).read_text(encoding="utf-8"))
    checkpoint = checkpoints.newest(run_dir / artifacts.CHECKPOINT_DIR, tidy=tidy)
    if checkpoint is None:
        console.note(f"{run_dir} holds an interrupted run with no complete checkpoint: it starts again from step 0")
        return StartPoint(run_dir, existing=True, previous_config=previous)
    console.say(f"resuming the interrupted run in {run_dir} from {checkpoint.path.name} (step {checkpoint.step}); "
        "`--resume never` refuses instead")
    return StartPoint(run_dir, checkpoint, existing=True, previous_config=checkpoint.fingerprint.get("config"),
                      previous_data=checkpoint.fingerprint.get("data"))


def _refuse_unless_an_unfinished_run(run_dir: Path) -> None:
    """Only an interrupted run that lora-ft made (the mark) is resumed; anything else is left untouched."""
    if not run_dir.is_dir():
        artifacts.check_run_dir_free(str(run_dir))  # not a directory: its message
    new_dir = run_lock.suggest_new_dir(run_dir)
    if (run_dir / artifacts.MANIFEST_FILE).is_file():
        raise UserError(
            f"output_dir {run_dir} already holds a finished run; lora-ft never writes over a run",
            fix=f"train into a new directory: --set output_dir={new_dir}; to train on from one "
            f"of its checkpoints, add --resume {run_dir}/{artifacts.CHECKPOINT_DIR}/checkpoint-N",
        )
    if not run_lock.is_marked(run_dir):
        earlier = ""
        if (run_dir / artifacts.CONFIG_FILE).is_file() and (run_dir / artifacts.CHECKPOINT_DIR).is_dir():
            earlier = (f"; if it is an interrupted run of an older lora-ft, start from one of its checkpoints in a "
                       f"new directory: --resume {run_dir}/{artifacts.CHECKPOINT_DIR}/checkpoint-N "
                       f"--set output_dir={new_dir}")
        raise UserError(
            f"output_dir {run_dir} is not empty and lora-ft did not make it (it has no {run_lock.MARK_FILE} mark); "
            "lora-ft never deletes, resumes into or writes over files it did not write",
            fix=f"choose an empty or new directory, e.g. --set output_dir={new_dir}{earlier}",
        )
    if not (run_dir / artifacts.CONFIG_FILE).is_file():
        raise UserError(
            f"output_dir {run_dir} is a lora-ft run directory without its {artifacts.CONFIG_FILE}, so the run "
            "in it cannot be resumed",
            fix=f"train into a new directory, e.g. --set output_dir={new_dir} (the files in {run_dir} are left "
            "as they are)",
        )


def _start_from_named_checkpoint(run_dir: Path, path: Path) -> StartPoint:
    if not path.is_dir():
        raise UserError(f"--resume {path}: no such checkpoint folder",
                        fix="give a checkpoint folder such as runs/NAME/checkpoints/checkpoint-40, or --resume auto")
    checkpoint, problem = checkpoints.verify(path)
    if checkpoint is None:
        raise UserError(f"--resume {path}: this checkpoint cannot be used: {problem}",
                        fix="pick an earlier checkpoint of the run, or --resume auto to take the newest "
                        "complete one")
    same_run = path.resolve().parent.parent == run_dir.resolve()
    if not same_run and not run_lock.is_fresh(run_dir):
        raise UserError(
            f"output_dir {run_dir} is not empty, and the checkpoint {path} belongs to another run",
            fix=f"train into a new directory: --set output_dir={run_lock.suggest_new_dir(run_dir)}",
        )
    if same_run:
        _refuse_unless_an_unfinished_run(run_dir)
        newest_folder = (checkpoints.folders(path.parent) or [path])[-1]
        newest_step = int(checkpoints.NAME.match(newest_folder.name).group(1)) if newest_folder != path else -1
        if newest_step > checkpoint.step:
            raise UserError(
                f"{path} is not the newest checkpoint of its run ({newest_folder.name} is newer); resuming from it "
                "would write over the newer ones",
                fix="train into a new directory, --set output_dir=..., to branch off from this checkpoint")
    console.say(f"starting from {path} (step {checkpoint.step})")
    return StartPoint(run_dir, checkpoint, existing=same_run, previous_config=checkpoint.fingerprint.get("config"),
                      previous_data=checkpoint.fingerprint.get("data"))


def check_same_processes(start: StartPoint, processes: int, strategy: str, force: bool) -> None:
    """A checkpoint resumes on another number of processes where the libraries allow it.

    DDP checkpoints hold whole tensors and resume on any number of processes, but the effective batch changes with
    it, so that is refused like a config change unless forced. FSDP checkpoints are sharded per process and resume
    only on the number of processes that wrote them.
    """
    if start.checkpoint is None:
        return
    before = start.checkpoint.fingerprint.get("processes", 1)
    if before == processes:
        return
    change = f"processes: {before} -> {processes} (the effective batch changes by {processes / before:g}x)"
    if strategy == "fsdp" and max(before, processes) > 1:
        raise UserError(
            f"cannot resume {start.checkpoint.path.name} on {processes} processes: it was written by {before} "
            "FSDP processes, and FSDP checkpoints are sharded per process",
            fix=f"resume with --nproc {before} (or the same torchrun --nproc-per-node and --nnodes as before)",
        )
    if not force:
        raise UserError(
            f"cannot resume {start.checkpoint.path.name}: it was trained on {before} process(es), this is {processes}",
            problems=[Problem(change)],
            fix=f"resume with --nproc {before}; or scale train.gradient_accumulation_steps to keep the effective "
            "batch and add --force-resume",
        )
    console.say(f"warning: --force-resume: resuming with a change: {change}")
    start.forced_changes.append(change)


def config_changes(previous: dict | None, current: dict) -> list[str]:
    if previous is None:
        return []
    old, new = compared_config(previous), compared_config(current)
    changes = []
    for key in sorted(set(old) | set(new)):
        if old.get(key, "(absent)") != new.get(key, "(absent)"):
            changes.append(f"{key}: {old.get(key, '(absent)')!r} -> {new.get(key, '(absent)')!r}")
    return changes


def data_changes(previous: dict | None, current: dict) -> list[str]:
    if previous is None or previous.get("tokens_sha256") == current["tokens_sha256"]:
        return []
    changes = []
    old_files, new_files = previous.get("files", {}), current["files"]
    for path in sorted(set(old_files) | set(new_files)):
        if path not in new_files:
            changes.append(f"data file {path} is no longer used")
        elif path not in old_files:
            changes.append(f"data file {path} is new")
        elif old_files[path] != new_files[path]:
            changes.append(f"data file {path} changed (sha256 {old_files[path][:12]} -> {new_files[path][:12]})")
    return changes or ["the tokenized training data differs (tokenizer, chat template or data settings changed)"]


def check_same_run(start: StartPoint, config: dict, data: dict | None, force: bool) -> None:
    """Refuse to resume with a different config or data unless forced; record what a forced resume changed."""
    if start.previous_config is None:
        return
    changes = config_changes(start.previous_config, config) + (data_changes(start.previous_data, data)
                                                               if data is not None else [])
    new = [c for c in changes if c not in start.forced_changes]
    if not new:
        return
    where = start.checkpoint.path.name if start.checkpoint else f"the run in {start.run_dir}"
    if not force:
        raise UserError(
            f"cannot resume {where}: the config or data differ from what it was trained with",
            problems=[Problem(c) for c in new],
            fix="undo the changes to resume the same run; or train into a new directory, --set output_dir=...; "
            "or add --force-resume to go on with the changed settings",
        )
    for change in new:
        console.say(f"warning: --force-resume: resuming with a change: {change}")
    start.forced_changes.extend(new)


def truncate_metrics(run_dir: Path, step: int) -> list[dict]:
    """Keep the logged records up to the step a run resumes from; later ones are from the interrupted attempt."""
    path = run_dir / artifacts.METRICS_FILE
    if not path.is_file():
        return []
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line cut short by the kill
        if isinstance(record, dict) and record.get("step", 0) <= step:
            kept.append(record)
    artifacts.write_metrics(run_dir, kept)
    return kept
