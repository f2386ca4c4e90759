"""``lora-ft validate CONFIG``: load and check a config, print it with every default filled in and the attention
kernel a run would use on this machine."""

from __future__ import annotations

from lora_ft import console
from lora_ft.errors import EXIT_OK


def run(args) -> int:
    from lora_ft.config import dump_config, load_config
    from lora_ft.config.attention import choice_on_this_machine

    loaded = load_config(args.config, args.overrides)
    attention = choice_on_this_machine(loaded)  # asks the model's transformers class (imported, not loaded)
    shown = loaded.config.model_copy(deep=True)
    shown.model.attn_implementation = attention.implementation
    console.say(dump_config(shown).rstrip())
    console.say(f"\n{attention.describe()}")
    console.say(f"config OK: {args.config}")
    return EXIT_OK
