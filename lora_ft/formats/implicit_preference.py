"""Preference pairs with an implicit prompt: ``{"chosen": [messages], "rejected": [messages]}``, two whole
conversations that are the same up to their last (assistant) turn; that shared beginning is the prompt."""

from lora_ft.formats import DataFormat
from lora_ft.formats._preference import answer_turns, pair_sample, prompt_turns
from lora_ft.conversations import conversation_turns
from lora_ft.samples import RowFault, Sample
from lora_ft.tool_turns import read_tools

COLUMNS = ("chosen", "rejected")


def detects(row: dict) -> bool:
    return "prompt" not in row and all(column in row for column in COLUMNS)


def to_sample(row: dict) -> Sample:
    sides = {}
    for column in COLUMNS:
        value = row.get(column)
        if value is None:
            raise RowFault(f"missing field '{column}'")
        if isinstance(value, str):
            raise RowFault(f"'{column}' is text; without a prompt column both sides must be conversations (lists of "
                           "messages), or add a 'prompt' column")
        sides[column] = conversation_turns(value, "role", "content", column)
        if sides[column][-1]["role"] != "assistant":
            raise RowFault(f"'{column}' does not end with an assistant turn")
    chosen, rejected = sides["chosen"], sides["rejected"]
    if chosen[:-1] != rejected[:-1]:
        raise RowFault("chosen and rejected have different prompts (the turns before the last answer differ)")
    return pair_sample(prompt_turns(chosen[:-1]), answer_turns(chosen[-1:], "chosen"),
                       answer_turns(rejected[-1:], "rejected"), read_tools(row.get("tools")))


FORMAT = DataFormat("implicit_preference", (*COLUMNS, "tools"), detects, to_sample, order=25, kind="pairs")
