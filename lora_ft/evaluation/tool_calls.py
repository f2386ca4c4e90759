"""Tool calls in generated answers, read back and scored against the reference turns of agents' conversations.

An answer's calls are read by :mod:`lora_ft.tool_call_text` (the hermes format, or one bare JSON call).

Each held-out assistant turn of a conversation with tools is answered from the conversation before it, with the
row's tools in the prompt. Where the reference turn calls, its answer scores, each a yes or no that needs the one
before it (so the rates only fall down the list):

- ``called``: the answer makes at least one call;
- ``valid_json``: and every call is valid;
- ``known_function``: and every call names a function in the row's tools;
- ``schema_valid``: and every call's arguments pass its function's JSON schema;
- ``exact``: and the calls are the reference's: the same (name, arguments) pairs, as many times each, in any
  order; arguments compared as parsed JSON (key order and spacing do not count, 1 equals 1.0, true is not 1).

Where the reference turn answers in text: ``called_anyway``, the answer makes a call (valid or not).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from lora_ft.samples import Sample
from lora_ft.tool_call_text import ParsedAnswer, parse_tool_calls
from lora_ft.tool_turns import drop_reasoning, schema_problem

CALL_METRICS = ("called", "valid_json", "known_function", "schema_valid", "exact")  # reference turns that call
TEXT_METRICS = ("called_anyway",)  # reference turns that answer in text
METRIC_LABELS = {"called": "called a tool", "valid_json": "calls valid JSON", "known_function": "functions known",
                 "schema_valid": "arguments fit schema", "exact": "exact calls",
                 "called_anyway": "called on text turns"}
DEFAULT_TURNS = 200  # assistant turns answered at most


# --- scores ------------------------------------------------------------------------------------------------------

def turn_scores(answer: ParsedAnswer, reference: dict, tools: list[dict] | None) -> dict[str, bool]:
    """One answer's scores against the reference assistant turn and the row's tools (module docstring)."""
    if not reference.get("tool_calls"):
        return {"called_anyway": bool(answer.calls)}
    schemas = {tool["function"]["name"]: tool["function"].get("parameters") or {} for tool in tools or []}
    calls = answer.calls
    called = bool(calls)
    valid_json = called and all(call.valid for call in calls)
    known_function = valid_json and all(call.name in schemas for call in calls)
    schema_valid = known_function and all(schema_problem(schemas[c.name], c.arguments) is None for c in calls)
    wanted = Counter(_call_key(c["function"]["name"], c["function"]["arguments"]) for c in reference["tool_calls"])
    exact = schema_valid and Counter(_call_key(call.name, call.arguments) for call in calls) == wanted
    return {"called": called, "valid_json": valid_json, "known_function": known_function,
            "schema_valid": schema_valid, "exact": exact}


def _call_key(name: str, arguments: dict) -> tuple[str, str]:
    return name, json.dumps(_canonical(arguments), sort_keys=True, ensure_ascii=False)


def _canonical(value: Any) -> Any:
    """A parsed JSON value with whole floats as integers (1.0 is 1); booleans stay booleans."""
    if isinstance(value, dict):
        return {key: _canonical(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_canonical(item) for item in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


@dataclass
class Rates:
    """One model's scores summed up: for each metric, the share of its turns that scored yes (None with no turns),
    and ``n``, how many turns that is."""

    rates: dict[str, float | None]
    n: dict[str, int]


def rates(scores: list[dict[str, bool]]) -> Rates:
    """The share of turns scoring yes on each metric, over the turns the metric applies to."""
    out, counts = {}, {}
    for metric in CALL_METRICS + TEXT_METRICS:
        values = [turn[metric] for turn in scores if metric in turn]
        out[metric], counts[metric] = (sum(values) / len(values) if values else None), len(values)
    return Rates(out, counts)


@dataclass
class ToolCallResult:
    """Base (or starting model) and tuned model on the assistant turns of the held-out conversations with tools."""

    source: str  # the eval data, in words
    conversations: int  # held-out conversations with tools
    turns: int  # their assistant turns
    answered: int  # the turns answered (at most --max-tool-turns, spread over all)
    base: Rates
    tuned: Rates

    def rows(self, before: str) -> list[tuple[str, ...]]:
        rows = [("tool calls", before, "tuned", "n")]
        for metric in CALL_METRICS + TEXT_METRICS:
            if self.tuned.n[metric]:
                rows.append((METRIC_LABELS[metric], f"{self.base.rates[metric]:.0%}",
                             f"{self.tuned.rates[metric]:.0%}", str(self.tuned.n[metric])))
        return rows

    def heading(self) -> str:
        return (f"tool calls: {self.answered} assistant turns answered, of {self.turns} in {self.conversations} "
                f"held-out conversations with tools ({self.source})")

    def verdict(self) -> str:
        """``tool calls exact 10% -> 60% (n=20)``, or the call rate where no turn calls."""
        metric = "exact" if self.tuned.n["exact"] else "called_anyway"
        name = "exact" if metric == "exact" else "called on text turns"
        return f"tool calls {name} {self.base.rates[metric]:.0%} -> {self.tuned.rates[metric]:.0%} " \
            f"(n={self.tuned.n[metric]})"

    def as_dict(self) -> dict:
        return {"source": self.source, "conversations": self.conversations, "turns": self.turns,
                "answered": self.answered, "base": self.base.rates, "tuned": self.tuned.rates, "n": self.tuned.n}


# --- the turns to answer -----------------------------------------------------------------------------------------

@dataclass
class ToolTurn:
    """One assistant turn of a held-out conversation with tools: the conversation before it (the prompt), the
    row's tools, and the turn itself (the reference)."""

    location: str  # the row's file:line and which assistant turn: "eval.jsonl:3 turn 2"
    prompt: list[dict]
    tools: list[dict]
    reference: dict


def tool_turns(samples: Iterable[Sample], limit: int | None = DEFAULT_TURNS,
               reasoning: str = "train") -> tuple[list[ToolTurn], int]:
    """Every assistant turn of every conversation with tools, and how many there are. Over ``limit``, the turns
    kept are spread evenly over all of them, in order (the same ones every time). ``reasoning``: the run's
    ``data.reasoning``; "drop" leaves the earlier turns' reasoning out of the prompts, as training did."""
    turns = []
    for sample in samples:
        if not sample.tools or not sample.messages or sample.is_preference:
            continue
        number = 0
        for index, message in enumerate(sample.messages):
            if message["role"] != "assistant":
                continue
            number += 1
            prompt = sample.messages[:index]
            if not any(m["role"] in ("user", "tool") for m in prompt):
                continue  # an opening assistant turn answers nothing
            turns.append(ToolTurn(f"{sample.location} turn {number}",
                                  drop_reasoning(prompt) if reasoning == "drop" else prompt, sample.tools, message))
    total = len(turns)
    if limit is not None and total > limit:
        turns = [turns[k * total // limit] for k in range(limit)]
    return turns, total


def turn_record(turn: ToolTurn, base_text: str, tuned_text: str) -> dict:
    """The line of samples.jsonl for one answered turn: both answers, their calls and their scores."""
    record = {"set": "tool calls", "location": turn.location, "prompt": turn.prompt[-1]["content"],
              "reference": {key: turn.reference[key] for key in ("content", "tool_calls") if key in turn.reference}}
    for model, text in (("base", base_text), ("tuned", tuned_text)):
        parsed = parse_tool_calls(text)
        record[model] = text
        record[f"{model}_calls"] = [call.as_dict() for call in parsed.calls]
        record[f"{model}_scores"] = turn_scores(parsed, turn.reference, turn.tools)
    return record
