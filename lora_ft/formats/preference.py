"""Preference pairs with an explicit prompt: ``{"prompt": "...", "chosen": "...", "rejected": "..."}``; each field
text or (TRL's conversational form) chat messages, the prompt ending with a user turn and the answers the
assistant's."""

from lora_ft.formats import DataFormat
from lora_ft.formats._preference import answer_turns, pair_sample, prompt_turns
from lora_ft.samples import Sample
from lora_ft.tool_turns import read_tools

COLUMNS = ("prompt", "chosen", "rejected")


def detects(row: dict) -> bool:
    return all(column in row for column in COLUMNS)


def to_sample(row: dict) -> Sample:
    return pair_sample(prompt_turns(row.get("prompt")), answer_turns(row.get("chosen"), "chosen"),
                       answer_turns(row.get("rejected"), "rejected"), read_tools(row.get("tools")))


FORMAT = DataFormat("preference", (*COLUMNS, "tools"), detects, to_sample, order=20, kind="pairs")
