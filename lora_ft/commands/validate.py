"""``lora-ft validate CONFIG``: load and check a config, print it with every default filled in."""

from __future__ import annotations

from lora_ft import console
from lora_ft.errors import EXIT_OK


def run(args) -> int:
    from lora_ft.config import dump_config, load_config

    loaded = load_config(args.config, args.overrides)
    console.say(dump_config(loaded.config).rstrip())
    console.say(f"\nconfig OK: {args.config}")
    return EXIT_OK
