"""``lora-ft merge RUN``: the adapter folded into the base weights, checked against the unmerged model."""

from __future__ import annotations

from lora_ft import console
from lora_ft.errors import EXIT_FAILURE, EXIT_OK
from lora_ft.rundir import lock as run_lock


def run(args) -> int:
    from pathlib import Path

    from lora_ft.rundir.finished import open_run
    from lora_ft.exports.merging import merge_run

    run = open_run(args.run_dir)
    console.quiet_libraries()
    out = Path(args.out) if args.out else run.run_dir / "merged"
    with run_lock.RunLock(run.run_dir, run_lock.command_line()):
        report = merge_run(run, out, dtype=args.dtype, into=args.into, base=args.base)
    console.say(f"merged model: {out}")
    return EXIT_FAILURE if report.within_tolerance is False else EXIT_OK
