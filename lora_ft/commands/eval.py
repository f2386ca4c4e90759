"""``lora-ft eval RUN``: the tuned model against its base on held-out data, with example answers."""

from __future__ import annotations

from lora_ft import console
from lora_ft.errors import EXIT_OK
from lora_ft.rundir import lock as run_lock


def run(args) -> int:
    from lora_ft.evaluation import evaluate_run
    from lora_ft.rundir.finished import open_run

    run = open_run(args.run_dir)
    console.quiet_libraries()
    with run_lock.RunLock(run.run_dir, run_lock.command_line()):
        evaluate_run(run, data_file=args.data, samples_to_show=args.samples, out_dir=args.out, base=args.base)
    return EXIT_OK
