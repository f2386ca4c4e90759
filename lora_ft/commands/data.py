"""``lora-ft data CONFIG``: what the data becomes for training, before anything trains."""

from __future__ import annotations

import sys

from lora_ft import console
from lora_ft.errors import EXIT_OK, UserError


def run(args) -> int:
    import os
    from pathlib import Path

    from lora_ft.config import load_config
    from lora_ft.data_report import report as data_report
    from lora_ft.data_report import files as report_files

    if args.plot:
        report_files.require_matplotlib()  # before the work, not after it
        report_files.check_output_file(Path(args.plot), "png")
    if args.json:
        report_files.check_output_file(Path(args.json), "json")
    loaded = load_config(args.config, args.overrides)
    console.quiet_libraries()
    report = data_report.build_report(loaded, samples=args.samples, cache=not args.no_cache)
    color = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
    console.say(data_report.render_text(report, color=color))
    if args.json:
        report_files.write_json(report, Path(args.json))
        console.say(f"\nJSON report: {args.json}")
    if args.plot:
        report_files.write_plot(report, Path(args.plot))
        console.say(f"length histogram: {args.plot}")
    if not report.ok:
        raise UserError(f"`lora-ft train` would stop on this data: {len(report.problems)} problem(s), listed "
                        "under '== verdict' above", fix="fix them, then run `lora-ft data` again")
    return EXIT_OK
