"""What the runs folder holds, read from the run directories as `lora-ft train` and `lora-ft eval` write them.

Nothing here writes, takes a lock or hashes a checkpoint: the index is read every few seconds while runs train, so
it reads only what a run directory says of itself (docs/run-directory.md): the mark, the lock's holder, the
resolved config, ``metrics.jsonl``, the names of committed checkpoints, ``manifest.json`` and ``eval/report.json``.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from lora_ft.rundir import artifacts, checkpoints, lock

FINISHED, RUNNING, INTERRUPTED, NOT_STARTED = "finished", "running", "interrupted", "stopped before a checkpoint"
EVAL_DIR = "eval"


@dataclass
class RunSummary:
    """One run directory, as the runs table and a run's page show it."""

    name: str  # the folder's path under the runs folder
    path: Path
    status: str  # FINISHED, RUNNING, INTERRUPTED or NOT_STARTED
    method: str = "?"
    base: str = "?"
    data: str = "?"
    step: int = 0  # the last step logged
    total_steps: int | None = None
    checkpoint: str | None = None  # the newest committed checkpoint's folder name
    eval_before: float | None = None
    eval_after: float | None = None
    verdict: str | None = None  # `lora-ft eval`'s verdict, when it ran
    holder: dict | None = None  # the process training it, while running
    metrics: dict = field(default_factory=dict)  # the manifest's final figures, once it finished
    updated: float = 0.0  # seconds since the epoch, of the newest of its files read here

    @property
    def status_text(self) -> str:
        if self.status == INTERRUPTED and self.checkpoint:
            return f"interrupted at {self.checkpoint}"
        if self.status == RUNNING and self.holder:
            return f"running (pid {self.holder.get('pid', '?')})"
        return self.status

    @property
    def steps_text(self) -> str:
        return f"{self.step}/{self.total_steps}" if self.total_steps else str(self.step)

    def row(self) -> list:
        """Its line in the runs table."""
        return [self.name, self.status_text, self.method, self.base, self.data, self.steps_text,
                figure(self.eval_before), figure(self.eval_after), self.verdict or "(not evaluated)"]


TABLE_HEADERS = ["run", "status", "method", "base model", "data", "steps", "eval loss before", "eval loss after",
                 "eval verdict"]


def figure(value: float | None) -> str:
    """A loss for a table: four decimals, blank when there is none."""
    return "" if value is None else f"{value:.4f}"


def read_json(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def read_metrics(run_dir: Path) -> list[dict]:
    """Every record of ``metrics.jsonl`` that reads whole (the last line may be half written while a run trains).
    The page reads it every few seconds: a file unchanged since the last read (same size and time) is not parsed
    again. The list returned is shared: read it, do not change it."""
    path = Path(run_dir) / artifacts.METRICS_FILE
    try:
        stat = path.stat()
    except OSError:
        return []
    return _parsed_metrics(str(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=256)
def _parsed_metrics(path: str, _mtime_ns: int, _size: int) -> list[dict]:
    records = []
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError:
        return records
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int):
            records.append(record)
    return records


def is_run_dir(path: Path) -> bool:
    """A folder lora-ft made for a run (its mark), or one holding a run's config (a run copied from elsewhere)."""
    return path.is_dir() and (lock.is_marked(path) or (path / artifacts.CONFIG_FILE).is_file())


def find_runs(runs_dir: Path, depth: int = 2) -> list[Path]:
    """The run directories under the runs folder, up to ``depth`` folders down; hidden folders and a run's own
    inside (checkpoints, exports) are not searched."""
    found: list[Path] = []
    try:
        children = sorted(p for p in Path(runs_dir).iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:
        return found
    for child in children:
        if is_run_dir(child):
            found.append(child)
        elif depth > 1:
            found.extend(find_runs(child, depth - 1))
    return found


def _data_names(config: dict) -> str:
    try:
        return ", ".join(Path(str(source["path"])).name for source in config["data"]["train"])
    except (KeyError, TypeError):
        return "?"


def _base_name(config: dict, manifest: dict | None) -> str:
    if manifest and isinstance(manifest.get("base_model"), dict):
        return str(manifest["base_model"].get("name", "?"))
    base = str((config.get("model") or {}).get("base", "?"))
    return base if "/" not in base or not Path(base).is_absolute() else Path(base).name


def _total_steps(config: dict, newest: Path | None) -> int | None:
    """The run's planned optimizer steps: from its newest checkpoint's trainer state, else its config's cap."""
    if newest is not None:
        state = read_json(newest / "trainer_state.json")
        if state and isinstance(state.get("max_steps"), int) and state["max_steps"] > 0:
            return state["max_steps"]
    steps = (config.get("train") or {}).get("max_steps")
    return steps if isinstance(steps, int) else None


def summarize(run_dir: Path, runs_dir: Path) -> RunSummary:
    """One run directory's summary; a file it cannot read leaves its figure blank, never an error."""
    run_dir = Path(run_dir)
    try:
        config = yaml.safe_load((run_dir / artifacts.CONFIG_FILE).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        config = {}
    config = config if isinstance(config, dict) else {}
    manifest = read_json(run_dir / artifacts.MANIFEST_FILE)
    holder = None if manifest else lock.holder(run_dir)
    committed, _ = checkpoints.scan_names(run_dir / artifacts.CHECKPOINT_DIR)
    newest = committed[-1] if committed else None
    records = read_metrics(run_dir)
    status = FINISHED if manifest else RUNNING if holder else INTERRUPTED if newest else NOT_STARTED
    summary = RunSummary(
        name=str(run_dir.relative_to(runs_dir)) if run_dir.is_relative_to(runs_dir) else run_dir.name,
        path=run_dir, status=status, method=str(config.get("method", "?")), base=_base_name(config, manifest),
        data=_data_names(config), step=max((r["step"] for r in records), default=0),
        total_steps=_total_steps(config, newest), checkpoint=newest.name if newest else None, holder=holder,
        metrics=(manifest or {}).get("metrics") or {})
    evals = [r["eval_loss"] for r in sorted(records, key=lambda r: r["step"]) if "eval_loss" in r]
    metrics = summary.metrics
    summary.eval_before = metrics.get("eval_loss_before", evals[0] if evals else None)
    summary.eval_after = metrics.get("eval_loss_after", evals[-1] if len(evals) > 1 else None)
    if manifest:
        summary.step = metrics.get("steps", summary.step)
        summary.total_steps = summary.total_steps or summary.step
    report = read_json(run_dir / EVAL_DIR / "report.json")
    summary.verdict = str(report["verdict"]) if report and report.get("verdict") else None
    stamps = [p.stat().st_mtime for p in (run_dir / artifacts.METRICS_FILE, run_dir / artifacts.MANIFEST_FILE,
                                          run_dir / artifacts.CONFIG_FILE) if p.exists()]
    summary.updated = max(stamps, default=0.0)
    return summary


def list_runs(runs_dir: Path) -> list[RunSummary]:
    """Every run under the folder, the most recently changed first."""
    runs_dir = Path(runs_dir)
    return sorted((summarize(path, runs_dir) for path in find_runs(runs_dir)), key=lambda s: -s.updated)


def eval_answers(run_dir: Path, limit: int = 200) -> list[dict]:
    """The answers `lora-ft eval` wrote (``eval/samples.jsonl``): base and tuned side by side with their scores."""
    rows = []
    try:
        lines = (Path(run_dir) / EVAL_DIR / "samples.jsonl").read_text(encoding="utf-8").splitlines()
    except OSError:
        return rows
    for line in lines[:limit]:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows
