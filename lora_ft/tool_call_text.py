"""Tool calls read out of generated text, as the run's chat template taught the model to write them (the hermes
format of :mod:`lora_ft.tool_template`, which Qwen's templates share): after an optional ``<think>...</think>``,
each ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` block is one call (several blocks: parallel
calls; a last block cut short before its closing tag is a call too), and the text outside the blocks is the
answer's text. An answer that is one bare JSON object with a ``name`` and ``arguments`` (or ``parameters``, as
Llama 3's templates ask for) is one call. A call is valid when its block is JSON: an object with a name and an
object of arguments (or a JSON string holding one, as OpenAI's API writes them). Used by ``lora-ft eval``,
``generate``, ``chat`` and GRPO's ``tool_call`` reward."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

# an open tag, then the block through its closing tag, the next block's opening, or the answer's end
TOOL_CALL = re.compile(r"<tool_call>(.*?)(?:</tool_call>|(?=<tool_call>)|\Z)", re.DOTALL)
# reasoning at the start; the opening tag may be the prompt's (templates that open <think> for the model)
THINK = re.compile(r"\A\s*(?:<think>)?(.*?)</think>\s*", re.DOTALL)


@dataclass
class ParsedCall:
    """One call as the model wrote it: its name and arguments when it is valid, else why it is not."""

    raw: str  # the call's JSON text as written
    name: str | None = None
    arguments: dict | None = None
    problem: str | None = None  # None when the call is valid

    @property
    def valid(self) -> bool:
        return self.problem is None

    def shown(self) -> str:
        """``name({"key": "value"})``, or the text written and why it is no call, for a person."""
        if self.valid:
            return f"{self.name}({json.dumps(self.arguments, ensure_ascii=False)})"
        return f"(not a valid call: {self.problem}) {' '.join(self.raw.split())[:200]}"

    def as_dict(self) -> dict:
        if self.valid:
            return {"name": self.name, "arguments": self.arguments}
        return {"raw": self.raw, "problem": self.problem}


@dataclass
class ParsedAnswer:
    """What a generated answer says: its reasoning, its text outside the calls, and its calls in order."""

    text: str
    calls: list[ParsedCall]
    reasoning: str | None = None


def parse_tool_calls(text: str) -> ParsedAnswer:
    """The calls an answer makes, its text outside them and its leading reasoning (module docstring)."""
    reasoning = None
    thought = THINK.match(text)
    if thought is not None:
        reasoning, text = thought.group(1).strip() or None, text[thought.end():]
    calls = [_read_call(block.group(1).strip()) for block in TOOL_CALL.finditer(text)]
    if calls:
        return ParsedAnswer(TOOL_CALL.sub("", text).strip(), calls, reasoning)
    bare = text.strip()
    if bare.startswith("{") and bare.endswith("}"):
        try:
            value = json.loads(bare)
        except json.JSONDecodeError:
            value = None
        if isinstance(value, dict) and "name" in value and ("arguments" in value or "parameters" in value):
            return ParsedAnswer("", [_read_call(bare)], reasoning)
    return ParsedAnswer(text.strip(), [], reasoning)


def _read_call(raw: str) -> ParsedCall:
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        return ParsedCall(raw, problem=f"not valid JSON ({exc.msg} at character {exc.pos})")
    if not isinstance(value, dict):
        return ParsedCall(raw, problem=f"a JSON {type(value).__name__}, not an object")
    name = value.get("name")
    if not isinstance(name, str) or not name:
        return ParsedCall(raw, problem="no function name")
    arguments = value.get("arguments", value.get("parameters", {}))
    if isinstance(arguments, str):  # OpenAI's API writes the arguments as a JSON string
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError:
            return ParsedCall(raw, name=name, problem="its arguments are a string that is not JSON")
    if not isinstance(arguments, dict):
        return ParsedCall(raw, name=name, problem=f"its arguments are {type(arguments).__name__}, not an object")
    return ParsedCall(raw, name=name, arguments=arguments)


def assistant_turn(answer: str, tools: list[dict] | None) -> tuple[dict, ParsedAnswer | None]:
    """A generated answer as the next turn of its conversation: with tools, its valid calls as ``tool_calls`` and
    its reasoning apart, so the chat template renders them as in training (``lora-ft chat`` and ``lora-ft ui``'s
    chat continue conversations with it); and the answer as read (None without tools)."""
    if not tools:
        return {"role": "assistant", "content": answer.strip()}, None
    parsed = parse_tool_calls(answer)
    turn: dict = {"role": "assistant", "content": parsed.text}
    if parsed.reasoning:
        turn["reasoning_content"] = parsed.reasoning
    calls = [{"type": "function", "id": f"call_{n + 1}", "function": {"name": c.name, "arguments": c.arguments}}
             for n, c in enumerate(c for c in parsed.calls if c.valid)]
    if calls:
        turn["tool_calls"] = calls
    return turn, parsed
