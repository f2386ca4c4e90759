"""What the preference formats share: a prompt and answers as text or as chat messages, and the faults that make
a pair useless (a missing or empty side, the same answer twice, two different prompts)."""

from __future__ import annotations

from typing import Any

from lora_ft.samples import RowFault, Sample, checked_conversation, conversation_turns

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
    """The prompt: text (one user turn) or messages ending with a user turn."""
    turns = _turns(value, "prompt", "user")
    if turns[-1]["role"] != "user":
        raise RowFault("the prompt does not end with a user turn")
    if not turns[-1]["content"].strip():
        raise RowFault("empty prompt")
    return turns


def answer_turns(value: Any, column: str) -> list[dict[str, str]]:
    """An answer: text (one assistant turn) or assistant messages."""
    turns = _turns(value, column, "assistant")
    if any(turn["role"] != "assistant" for turn in turns):
        raise RowFault(f"'{column}' holds a turn that is not the assistant's")
    if not any(turn["content"].strip() for turn in turns):
        raise RowFault(f"empty {column} answer")
    return turns


def checked_answers(prompt: list[dict[str, str]], **answers: list[dict[str, str]] | None) -> dict:
    """The conversation checks of every prompt + answer; the prompt as the checks leave it."""
    checked = prompt
    for turns in answers.values():
        if turns is not None:
            conversation = checked_conversation(prompt + turns)
            checked = conversation[:len(conversation) - len(turns)]
    return checked


def pair_sample(prompt: list[dict[str, str]], chosen: list[dict[str, str]],
                rejected: list[dict[str, str]]) -> Sample:
    if [t["content"].strip() for t in chosen] == [t["content"].strip() for t in rejected]:
        raise RowFault("chosen and rejected are the same answer")
    return Sample("", messages=checked_answers(prompt, chosen=chosen, rejected=rejected), chosen=chosen,
                  rejected=rejected)


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
