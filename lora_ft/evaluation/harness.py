"""Standard benchmarks through lm-evaluation-harness (the optional extra ``lora-ft[eval]``): the same tasks for the
model the run started from and for the tuned one, side by side.

The harness loads the models itself: the base from its directory and the tuned model as base + adapter through its
own PEFT support (``peft=``), with the tokenizer saved beside the adapter for both. Tasks come from the harness's
registry or, offline, from task folders given with ``include_path`` (the project ships ``examples/legal/harness``).
"""

from __future__ import annotations

import difflib
import logging
import time
from pathlib import Path

from lora_ft.errors import UserError
from lora_ft.rundir.finished import FinishedRun, locate_base

INSTALL_FIX = "install the extra: pip install 'lora-ft[eval]' (or: bash scripts/setup.sh --eval)"


def task_manager(include_path: str | None):
    try:
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise UserError("--tasks needs lm-evaluation-harness, which is not installed", fix=INSTALL_FIX) from None
    if include_path is not None and not Path(include_path).is_dir():
        raise UserError(f"--include-path {include_path} is not a folder",
                        fix="give the folder that holds the task YAML files (e.g. examples/legal/harness)")
    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    return TaskManager(include_path=str(Path(include_path).resolve()) if include_path else None)


def check_tasks(manager, tasks: list[str], include_path: str | None) -> None:
    """Every named task (or group or tag) exists, or say which does not and what is close."""
    known = set(manager.all_tasks)
    for name in tasks:
        if name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=3)
            hint = f"did you mean {', '.join(close)}? " if close else ""
            where = f" (nor in {include_path})" if include_path else ""
            raise UserError(f"lm-evaluation-harness has no task named {name!r}{where}",
                            fix=f"{hint}list the tasks with `lm_eval ls tasks`, or give a folder of task YAML files "
                            "with --include-path")


def _scores(results: dict, tasks: list[str]) -> dict[str, dict[str, float]]:
    """{task: {metric: value}} from the harness's results, stderr and non-numbers left out."""
    out: dict[str, dict[str, float]] = {}
    for task, values in results["results"].items():
        metrics = {key.split(",")[0]: float(value) for key, value in values.items()
                   if "," in key and "_stderr" not in key and isinstance(value, (int, float))}
        if metrics:
            out[task] = metrics
    return {t: out[t] for t in sorted(out, key=lambda t: (t not in tasks, t))}


def evaluate_model(manager, tasks: list[str], *, pretrained: str, tokenizer: str, peft: str | None, limit,
                   batch_size: int, trust_remote_code: bool) -> dict[str, dict[str, float]]:
    import torch
    from lm_eval import simple_evaluate

    cuda = torch.cuda.is_available()
    model_args = {"pretrained": pretrained, "tokenizer": tokenizer, "dtype": "bfloat16" if cuda else "float32",
                  "trust_remote_code": trust_remote_code}
    if peft is not None:
        model_args["peft"] = peft
    try:
        results = simple_evaluate(model="hf", model_args=model_args, tasks=tasks, task_manager=manager,
                                  batch_size=batch_size, device="cuda" if cuda else "cpu", limit=limit,
                                  log_samples=False)
    except (ConnectionError, OSError) as exc:
        first = str(exc).strip().splitlines()[0][:240] if str(exc).strip() else type(exc).__name__
        raise UserError(f"lm-evaluation-harness could not load a task's data: {first}",
                        fix="standard tasks download their datasets from the Hugging Face hub; offline, use tasks "
                        "defined on local files with --include-path") from None
    return _scores(results, tasks)


def compare(run: FinishedRun, manager, tasks: list[str], *, limit: int | None = None, base: str | None = None,
            batch_size: int = 8) -> tuple[dict, float]:
    """Scores of the starting model and the tuned one on tasks :func:`check_tasks` found in ``manager``:
    ({task: {metric: {"base": x, "tuned": y}}}, seconds)."""
    started = time.time()
    shared = dict(pretrained=locate_base(run, base), tokenizer=str(run.adapter_dir), limit=limit,
                  batch_size=batch_size, trust_remote_code=run.config.model.trust_remote_code)
    start_adapter = run.config.model.adapter  # a run that started from another run's adapter is compared with it
    before = evaluate_model(manager, tasks, peft=str(Path(start_adapter) / "adapter") if start_adapter else None,
                            **shared)
    after = evaluate_model(manager, tasks, peft=str(run.adapter_dir), **shared)
    table = {task: {metric: {"base": before[task][metric], "tuned": value}
                    for metric, value in metrics.items() if metric in before.get(task, {})}
             for task, metrics in after.items()}
    return table, time.time() - started
