"""What the preference formats share: a prompt and answers as text or as chat messages, and the faults that make
a pair useless (a missing or empty side, the same answer twice, two different prompts)."""

from __future__ import annotations

from typing import Any

from lora_ft.conversations import checked_conversation, conversation_turns
from lora_ft.samples import RowFault, Sample

LABEL_WORDS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def _turns(value: Any, column: str, role: str) -> list[dict[str, str]]:
    if value is None:
        raise RowFault(f"missing field '{column}'")
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    if isinstance(value, dict):  # a single message
        value = [value]
    return conversation_turns(value, "role", "content", column)


def prompt_turns(value: Any) -> list[dict[str, str]]:
    """The prompt: text (one user turn) or messages ending with a user turn (or a tool's result)."""
    turns = _turns(value, "prompt", "user")
    if turns[-1]["role"] not in ("user", "tool"):
        raise RowFault("the prompt does not end with a user turn")
    if turns[-1]["role"] == "user" and not turns[-1]["content"].strip():
        raise RowFault("empty prompt")
    return turns


def answer_turns(value: Any, column: str) -> list[dict[str, str]]:
    """An answer: text (one assistant turn) or assistant messages."""
    turns = _turns(value, column, "assistant")
    if any(turn["role"] != "assistant" for turn in turns):
        raise RowFault(f"'{column}' holds a turn that is not the assistant's")
    if not any(turn["content"].strip() or turn.get("tool_calls") for turn in turns):
        raise RowFault(f"empty {column} answer")
    return turns


def checked_answers(prompt: list[dict], tools: list[dict] | None = None, **answers: list[dict] | None) -> list:
    """The conversation checks of every prompt + answer (calls against ``tools``); the prompt as the checks leave
    it."""
    checked = prompt
    for turns in answers.values():
        if turns is not None:
            conversation = checked_conversation(prompt + turns, tools)
            checked = conversation[:len(conversation) - len(turns)]
    return checked


def pair_sample(prompt: list[dict], chosen: list[dict], rejected: list[dict],
                tools: list[dict] | None = None) -> Sample:
    if _answer_keys(chosen) == _answer_keys(rejected):
        raise RowFault("chosen and rejected are the same answer")
    return Sample("", messages=checked_answers(prompt, tools, chosen=chosen, rejected=rejected), chosen=chosen,
                  rejected=rejected, tools=tools)


def _answer_keys(turns: list[dict]) -> list:
    return [(t["content"].strip(), t.get("tool_calls"), t.get("reasoning_content")) for t in turns]


def label_value(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in LABEL_WORDS:
        return LABEL_WORDS[value.strip().lower()]
    if value is None:
        raise RowFault("missing field 'label'")
    raise RowFault(f"label is {value!r}, not true or false")
