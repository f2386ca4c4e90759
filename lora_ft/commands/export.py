"""``lora-ft export RUN --format TARGET``: a finished run packaged for the engine that serves it."""

from __future__ import annotations

from lora_ft import console
from lora_ft.errors import EXIT_FAILURE, EXIT_OK
from lora_ft.rundir import lock as run_lock


def run(args) -> int:
    from pathlib import Path

    from lora_ft.exports import targets
    from lora_ft.rundir.finished import open_run

    run = open_run(args.run_dir)
    console.quiet_libraries()
    out = Path(args.out) if args.out else run.run_dir / f"export-{args.format}"
    with run_lock.RunLock(run.run_dir, run_lock.command_line()):
        check = targets.export(args.format, run, out, args)
    console.say(f"exported: {out}")
    return EXIT_FAILURE if check["passed"] is False else EXIT_OK  # None: not run in an engine, said above
