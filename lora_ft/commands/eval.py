"""``lora-ft eval RUN``: did the fine-tune help, and what did it cost? Base (or starting model) against tuned."""

from __future__ import annotations

from pathlib import Path

from lora_ft import console
from lora_ft.errors import EXIT_OK, UserError
from lora_ft.rundir import lock as run_lock


def options_from(args):
    from lora_ft.evaluation.run import EvalOptions

    if args.general and args.no_general:
        raise UserError("--general and --no-general contradict each other", fix="give one of them")
    if args.general and not Path(args.general).is_file():
        raise UserError(f"--general {args.general} does not exist", fix="give a data file (jsonl, json, csv, parquet) "
                        "of general instructions, or leave --general out to use the file shipped with lora-ft")
    if args.include_path and not args.tasks:
        raise UserError("--include-path is given without --tasks", fix="name the tasks to run, e.g. --tasks legal_mc")
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else None
    return EvalOptions(data_file=args.data, general_file="" if args.no_general else args.general,
                       samples_to_show=args.samples, max_new_tokens=args.max_new_tokens, max_answers=args.max_answers,
                       max_tool_turns=args.max_tool_turns, batch_size=args.batch_size, tasks=tasks,
                       include_path=args.include_path, task_limit=args.task_limit,
                       out_dir=Path(args.out) if args.out else None, base=args.base)


def run(args) -> int:
    from lora_ft.evaluation.run import evaluate_run
    from lora_ft.rundir.finished import open_run

    run = open_run(args.run_dir)
    options = options_from(args)
    console.quiet_libraries()
    with run_lock.RunLock(run.run_dir, run_lock.command_line()):
        evaluate_run(run, options)
    return EXIT_OK
