"""A training example (:class:`Sample`), the fault that makes a row unusable (:class:`RowFault`), the roles a
conversation may have and the text of a turn. How the conversational formats read and check turns is
:mod:`lora_ft.conversations`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

ROLE_ALIASES = {
    "system": "system",
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "model": "assistant",
    "bot": "assistant",
    "tool": "tool",  # a tool's result
    "function": "tool",  # OpenAI's older name for a function's result
    "ipython": "tool",  # Llama 3's
    "observation": "tool",  # ShareGPT's (LLaMA-Factory)
    "function_call": "function_call",  # ShareGPT's assistant call (LLaMA-Factory): the value is the call's JSON
}

class RowFault(Exception):
    """A row that cannot be used; the message is the reason, the same for every row with this fault."""


@dataclass
class Sample:
    """One training example, and where it came from.

    SFT: a conversation (``messages``) or raw ``text``. Preference data: ``messages`` is the prompt (it ends with
    a user turn) and ``chosen``/``rejected`` the answers' turns; an unpaired (KTO) row has only one of the two.
    An agent's conversation also has the ``tools`` it may call, and turns in the shape :mod:`lora_ft.tool_turns`
    gives them (calls, results, reasoning). An RL prompt (``method: grpo``) is ``messages`` ending with a user turn,
    with the row's other ``columns`` (a reference answer, a test) for its reward functions.
    """

    location: str
    messages: list[dict[str, Any]] | None = None
    text: str | None = None
    chosen: list[dict[str, Any]] | None = None
    rejected: list[dict[str, Any]] | None = None
    tools: list[dict] | None = None
    columns: dict[str, Any] | None = None  # a prompt's other columns (RL: the reward functions' references)

    @property
    def is_preference(self) -> bool:
        return self.chosen is not None or self.rejected is not None


def content_text(value: Any) -> str:
    if isinstance(value, list):  # OpenAI content parts: [{"type": "text", "text": "..."}]
        texts = [p.get("text") for p in value if isinstance(p, dict) and p.get("type") == "text"]
        if texts and all(isinstance(t, str) for t in texts) and len(texts) == len(value):
            return "".join(texts)
        raise RowFault("a turn's content is a list with non-text parts")
    if not isinstance(value, str):
        raise RowFault(f"a turn's content is {type(value).__name__}, not text")
    return value


def required_text(row: dict, column: str, what: str) -> str:
    if column not in row or row[column] is None:
        raise RowFault(f"missing field '{column}'")
    value = row[column]
    if not isinstance(value, str):
        raise RowFault(f"'{column}' is {type(value).__name__}, not text")
    if not value.strip():
        raise RowFault(f"empty {what}")
    return value
