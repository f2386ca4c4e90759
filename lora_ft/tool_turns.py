"""Agents' conversations: the tool list, the assistant's calls, the tools' results and the assistant's reasoning,
read from a row into one shape and checked.

The shape is the one transformers' chat templates and vLLM's server take (OpenAI's):

- ``tools``: ``[{"type": "function", "function": {"name", "description", "parameters": <JSON schema>}}]``
- an assistant turn that calls: ``{"role": "assistant", "content": "...", "tool_calls": [{"type": "function",
  "function": {"name": ..., "arguments": {...}}, "id": ...}]}`` (arguments always an object here)
- a result: ``{"role": "tool", "content": "...", "name": <the function>, "tool_call_id": ...}``
- reasoning: ``"reasoning_content"`` on an assistant turn (read from ``reasoning_content``, ``reasoning``, or a
  ``<think>...</think>`` at the start of the content).

A row that cannot be trained on as it is raises :class:`RowFault` with the reason, named by file:line by the caller.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from typing import Any

from lora_ft.samples import RowFault, content_text

THINK = re.compile(r"\A\s*<think>(.*?)</think>\s*", re.DOTALL)


def read_tools(value: Any) -> list[dict] | None:
    """The row's tool list in OpenAI's shape; a JSON string (LLaMA-Factory's ``tools``) and bare function schemas
    (``{"name", "description", "parameters"}``) are read too. None when the row lists none."""
    if value is None or value == "" or value == []:
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise RowFault(f"'tools' is not valid JSON ({exc.msg} at character {exc.pos})") from None
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        raise RowFault(f"'tools' is {type(value).__name__}, not a list of function schemas")
    tools, names = [], set()
    for index, entry in enumerate(value):
        function = entry.get("function", entry) if isinstance(entry, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
            raise RowFault(f"'tools' entry {index} has no function name")
        if function["name"] in names:
            raise RowFault(f"'tools' lists the function '{function['name']}' twice")
        parameters = function.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(parameters, dict):
            raise RowFault(f"the parameters of tool '{function['name']}' are not a JSON schema object")
        _check_schema(function["name"], json.dumps(parameters, sort_keys=True))
        names.add(function["name"])
        tools.append({"type": "function", "function": {**function, "parameters": parameters}})
    return tools


def call_arguments(value: Any, name: str) -> dict:
    """A call's arguments as an object: an object as written, or a JSON string holding one."""
    if value is None or value == "":
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise RowFault(f"the arguments of the call to '{name}' are not valid JSON") from None
    if not isinstance(value, dict):
        raise RowFault(f"the arguments of the call to '{name}' are {type(value).__name__}, not a JSON object")
    return value


def read_call(value: Any) -> dict:
    """One call, from OpenAI's ``{"type": "function", "function": {...}, "id"}``, a bare ``{"name", "arguments"}``
    (ShareGPT's function_call), or a JSON string of either."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise RowFault("a function call is not valid JSON") from None
    if not isinstance(value, dict):
        raise RowFault("a function call is not an object")
    function = value.get("function", value)
    name = function.get("name") if isinstance(function, dict) else None
    if not isinstance(name, str) or not name:
        raise RowFault("a function call has no name")
    arguments = function.get("arguments", function.get("parameters"))
    call = {"type": "function", "function": {"name": name, "arguments": call_arguments(arguments, name)}}
    if value.get("id") not in (None, ""):
        call["id"] = str(value["id"])
    return call


def assistant_turn(turn: dict, content: Any) -> dict:
    """An assistant turn: its text, its calls and its reasoning."""
    text = "" if content is None and (turn.get("tool_calls") or turn.get("function_call")) else content_text(content)
    message: dict = {"role": "assistant", "content": text}
    reasoning = turn.get("reasoning_content", turn.get("reasoning"))
    thought = THINK.match(text)
    if thought is not None:
        if reasoning is None:
            reasoning = thought.group(1).strip()
        message["content"] = text[thought.end():]
    if reasoning is not None:
        if not isinstance(reasoning, str):
            raise RowFault("an assistant turn's reasoning is not text")
        if reasoning.strip():
            message["reasoning_content"] = reasoning.strip()
    calls = turn.get("tool_calls")
    if calls is None and turn.get("function_call") is not None:  # OpenAI's older single call
        calls = [turn["function_call"]]
    if calls is not None:
        if not isinstance(calls, list):
            raise RowFault("'tool_calls' is not a list")
        if calls:
            message["tool_calls"] = [read_call(call) for call in calls]
    return message


def tool_turn(turn: dict, content: Any) -> dict:
    """A tool's result: its text (an object is written as JSON), the function and the call it answers."""
    if isinstance(content, (dict, list)):
        text = json.dumps(content, ensure_ascii=False)
    elif content is None:
        raise RowFault("a tool result has no content")
    else:
        text = content_text(content)
    message = {"role": "tool", "content": text}
    for key in ("name", "tool_call_id"):
        if turn.get(key) not in (None, ""):
            message[key] = str(turn[key])
    return message


def check_tool_turns(messages: list[dict], tools: list[dict] | None) -> None:
    """Every call names a listed function with arguments its schema accepts; every result answers a call made
    before it (by id, by name, or in order) and takes that call's function name where it gives none."""
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in tools or []}
    pending: list[dict] = []
    for message in messages:
        if message["role"] == "assistant":
            pending = list(message.get("tool_calls", []))
            for call in pending:
                name, arguments = call["function"]["name"], call["function"]["arguments"]
                if not schemas:
                    raise RowFault(f"the assistant calls '{name}' but the row has no 'tools'")
                if name not in schemas:
                    raise RowFault(f"a call to '{name}', which is not in the row's tools ({', '.join(schemas)})")
                problem = schema_problem(schemas[name], arguments)
                if problem is not None:
                    raise RowFault(f"the arguments of the call to '{name}' break its schema: {problem}")
        elif message["role"] == "tool":
            if not pending:
                raise RowFault("a tool result with no call before it")
            call = _answered_call(message, pending)
            pending.remove(call)
            message.setdefault("name", call["function"]["name"])
        else:
            pending = []


def _answered_call(result: dict, pending: list[dict]) -> dict:
    if "tool_call_id" in result:
        found = next((c for c in pending if c.get("id") == result["tool_call_id"]), None)
        if found is None:
            raise RowFault(f"a tool result's tool_call_id '{result['tool_call_id']}' matches no call before it")
        return found
    if "name" in result:
        found = next((c for c in pending if c["function"]["name"] == result["name"]), None)
        if found is None:
            raise RowFault(f"a tool result from '{result['name']}', which no call before it made")
        return found
    return pending[0]


def schema_problem(schema: dict, arguments: dict) -> str | None:
    """What makes ``arguments`` break the JSON schema, in one line, or None when they are valid."""
    validator = _validator(json.dumps(schema, sort_keys=True))
    error = next(iter(sorted(validator.iter_errors(arguments), key=lambda e: list(e.path))), None)
    if error is None:
        return None
    where = "/".join(str(p) for p in error.path)
    return f"{error.message}" + (f" (at '{where}')" if where else "")


def _check_schema(name: str, schema_json: str) -> None:
    try:
        _validator(schema_json)
    except Exception as exc:  # noqa: BLE001 - jsonschema's SchemaError, or a schema it cannot read
        message = getattr(exc, "message", str(exc)).splitlines()[0]
        raise RowFault(f"the parameters of tool '{name}' are not a valid JSON schema: {message}") from None


@lru_cache(maxsize=256)
def _validator(schema_json: str):
    from jsonschema.validators import validator_for

    schema = json.loads(schema_json)
    cls = validator_for(schema)
    cls.check_schema(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def drop_reasoning(messages: list[dict]) -> list[dict]:
    """The conversation without the assistant's reasoning (``data.reasoning: drop``)."""
    if not any("reasoning_content" in m for m in messages):
        return messages
    return [{k: v for k, v in m.items() if k != "reasoning_content"} for m in messages]


def has_tools(messages: list[dict] | None) -> bool:
    return any("tool_calls" in m or m["role"] == "tool" for m in messages or [])
