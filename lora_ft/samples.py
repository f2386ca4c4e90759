"""A training example (:class:`Sample`), the fault that makes a row unusable (:class:`RowFault`), and the checks
every conversational format shares: roles, turn order, an answer to learn."""

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
}

class RowFault(Exception):
    """A row that cannot be used; the message is the reason, the same for every row with this fault."""


@dataclass
class Sample:
    """One training example, and where it came from.

    SFT: a conversation (``messages``) or raw ``text``. Preference data: ``messages`` is the prompt (it ends with
    a user turn) and ``chosen``/``rejected`` the answers' turns; an unpaired (KTO) row has only one of the two.
    """

    location: str
    messages: list[dict[str, str]] | None = None
    text: str | None = None
    chosen: list[dict[str, str]] | None = None
    rejected: list[dict[str, str]] | None = None

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


def conversation_turns(turns: Any, role_key: str, content_key: str, column: str) -> list[dict[str, str]]:
    if not isinstance(turns, list) or not turns:
        raise RowFault(f"'{column}' is empty or not a list")
    messages = []
    for turn in turns:
        if not isinstance(turn, dict):
            raise RowFault(f"'{column}' item is not an object")
        if role_key not in turn:
            raise RowFault(f"'{column}' item has no '{role_key}' field")
        if content_key not in turn:
            raise RowFault(f"'{column}' item has no '{content_key}' field")
        raw_role = str(turn[role_key]).strip().lower()
        role = ROLE_ALIASES.get(raw_role)
        if role is None:
            raise RowFault(f"unknown role '{turn[role_key]}' (use system, user or assistant)")
        messages.append({"role": role, "content": content_text(turn[content_key])})
    return messages


def checked_conversation(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    for index, message in enumerate(messages):
        if message["role"] == "system" and index != 0:
            raise RowFault("system message after the first turn")
    body = messages[1:] if messages and messages[0]["role"] == "system" else messages
    for prev, cur in zip(body, body[1:]):
        if prev["role"] == cur["role"]:
            raise RowFault(f"two {cur['role']} turns in a row")
    while body and body[-1]["role"] != "assistant":  # a trailing question has no answer to learn
        body = body[:-1]
    if not body or all(m["role"] != "assistant" for m in body):
        raise RowFault("no assistant answer")
    if body[0]["role"] != "user":
        raise RowFault("the conversation does not start with a user turn")
    for message in body:
        if message["role"] == "assistant" and not message["content"].strip():
            raise RowFault("empty answer")
        if message["role"] == "user" and not message["content"].strip():
            raise RowFault("empty user turn")
    return (messages[:1] if messages[0]["role"] == "system" else []) + body


def required_text(row: dict, column: str, what: str) -> str:
    if column not in row or row[column] is None:
        raise RowFault(f"missing field '{column}'")
    value = row[column]
    if not isinstance(value, str):
        raise RowFault(f"'{column}' is {type(value).__name__}, not text")
    if not value.strip():
        raise RowFault(f"empty {what}")
    return value
