"""Prompts for reinforcement learning (``method: grpo``): ``{"prompt": "...", "answer": "..."}``. The prompt is
text (one user turn) or chat messages ending with a user turn; every other column (a reference answer, a test, a
schema) is handed to the reward functions under its own name; a ``tools`` column also reaches the template."""

from __future__ import annotations

import json

from lora_ft.formats import DataFormat
from lora_ft.formats._preference import prompt_turns
from lora_ft.samples import RowFault, Sample
from lora_ft.tool_turns import check_tool_turns, has_tools, read_tools

ANSWER_COLUMNS = ("completion", "chosen", "rejected", "label", "messages", "conversations")


def detects(row: dict) -> bool:
    return "prompt" in row and not any(column in row for column in ANSWER_COLUMNS)


def column_value(value):
    """A column as the reward functions receive it: text, numbers and booleans as they are, lists and objects as
    JSON text (one type per column, whatever the rows hold)."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def to_sample(row: dict) -> Sample:
    turns = prompt_turns(row.get("prompt"))
    if turns[-1]["role"] != "user":
        raise RowFault("the prompt does not end with a user turn")
    tools = read_tools(row.get("tools"))
    columns = {key: column_value(value) for key, value in row.items() if key != "prompt"}
    if tools is not None:
        columns["tools"] = column_value(tools)
    return Sample("", messages=checked_prompt(turns, tools), tools=tools, columns=columns)


def checked_prompt(turns: list[dict], tools: list[dict] | None) -> list[dict]:
    """A prompt conversation as the template renders it: a system turn first if at all, then turns that alternate
    from a user turn (a tool's results follow the call), ending with the user's; calls checked against ``tools``."""
    if any(turn["role"] == "system" for turn in turns[1:]):
        raise RowFault("system message after the first turn")
    body = turns[1:] if turns[0]["role"] == "system" else turns
    if not body or body[0]["role"] != "user":
        raise RowFault("the prompt does not start with a user turn")
    for prev, cur in zip(body, body[1:]):
        if prev["role"] == cur["role"] and cur["role"] != "tool":
            raise RowFault(f"two {cur['role']} turns in a row")
    if any(turn["role"] == "user" and not turn["content"].strip() for turn in body):
        raise RowFault("empty user turn")
    if tools or has_tools(turns):
        check_tool_turns(turns, tools)
    return turns


FORMAT = DataFormat("prompts", ("prompt", "tools"), detects, to_sample, order=60, kind="prompts")
