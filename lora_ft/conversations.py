"""What every conversational format shares: turns read into one shape (roles, text, an assistant's calls and
reasoning, a tool's results) and the checks of a conversation to train on (roles, turn order, an answer to learn,
calls against the row's tools)."""

from __future__ import annotations

from typing import Any

from lora_ft import tool_turns
from lora_ft.samples import ROLE_ALIASES, RowFault, content_text


def conversation_turns(turns: Any, role_key: str, content_key: str, column: str) -> list[dict[str, Any]]:
    """A conversation's turns in one shape: a role (see ``ROLE_ALIASES``) and text content; an assistant turn's
    calls and reasoning and a tool result's call are read as :mod:`lora_ft.tool_turns` says."""
    if not isinstance(turns, list) or not turns:
        raise RowFault(f"'{column}' is empty or not a list")
    messages = []
    for turn in turns:
        if not isinstance(turn, dict):
            raise RowFault(f"'{column}' item is not an object")
        if role_key not in turn:
            raise RowFault(f"'{column}' item has no '{role_key}' field")
        raw_role = str(turn[role_key]).strip().lower()
        role = ROLE_ALIASES.get(raw_role)
        if role is None:
            raise RowFault(f"unknown role '{turn[role_key]}' (use system, user, assistant or tool)")
        calls = role == "assistant" and (turn.get("tool_calls") or turn.get("function_call"))
        if content_key not in turn and not calls:
            raise RowFault(f"'{column}' item has no '{content_key}' field")
        content = turn.get(content_key)
        if role == "function_call":  # the value is the call; consecutive calls are one turn's parallel calls
            call = tool_turns.read_call(content)
            if messages and messages[-1]["role"] == "assistant" and messages[-1].get("tool_calls"):
                messages[-1]["tool_calls"].append(call)
            else:
                messages.append({"role": "assistant", "content": "", "tool_calls": [call]})
        elif role == "assistant":
            messages.append(tool_turns.assistant_turn(turn, content))
        elif role == "tool":
            messages.append(tool_turns.tool_turn(turn, content))
        else:
            messages.append({"role": role, "content": content_text(content)})
    return messages


def checked_conversation(messages: list[dict[str, Any]], tools: list[dict] | None = None) -> list[dict[str, Any]]:
    """The conversation as trained: system first if at all, then turns that alternate from a user turn (a tool's
    results follow the call), ending with an answer; calls and results checked against ``tools``."""
    for index, message in enumerate(messages):
        if message["role"] == "system" and index != 0:
            raise RowFault("system message after the first turn")
    body = messages[1:] if messages and messages[0]["role"] == "system" else messages
    for prev, cur in zip(body, body[1:]):
        if prev["role"] == cur["role"] and cur["role"] != "tool":
            raise RowFault(f"two {cur['role']} turns in a row")
    while body and body[-1]["role"] != "assistant":  # a trailing question has no answer to learn
        body = body[:-1]
    if not body or all(m["role"] != "assistant" for m in body):
        raise RowFault("no assistant answer")
    if body[0]["role"] != "user":
        raise RowFault("the conversation does not start with a user turn")
    for message in body:
        if message["role"] == "assistant" and not message["content"].strip() and not message.get("tool_calls"):
            raise RowFault("empty answer")
        if message["role"] == "user" and not message["content"].strip():
            raise RowFault("empty user turn")
    checked = (messages[:1] if messages[0]["role"] == "system" else []) + body
    if tools or tool_turns.has_tools(checked):
        tool_turns.check_tool_turns(checked, tools)
    return checked
