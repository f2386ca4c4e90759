"""The built-in rewards: each scores a batch of completions (TRL's reward-function signature: ``prompts``,
``completions``, ``completion_ids`` and the data's other columns as keyword lists) and returns one float per
completion. What each one scores is said in :data:`lora_ft.rewards.BUILTINS`."""

from __future__ import annotations

import json
import re
from collections.abc import Callable

from lora_ft.answer_metrics import rouge_l, squad_tokens

# a multiple-choice letter: after "answer is"/"Answer:", or opening the answer alone, in brackets, or before a
# full stop, bracket or colon -- never an article ("A condition precedent is ..." gives no letter)
_ANSWER_IS = re.compile(r"\banswer(?:\s+is)?\s*[:\-]?\s*\(?([A-J])\)?(?![A-Za-z])", re.IGNORECASE)
_OPENING = re.compile(r"^\s*(?:\(([A-J])\)|([A-J])(?:[.):]|\s*$))")


def text_of(completion) -> str:
    """A completion's text: TRL hands text, or for a conversational prompt the assistant's messages."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list):
        return "".join(m.get("content") or "" for m in completion if isinstance(m, dict))
    return str(completion)


def chosen_letter(text: str) -> str | None:
    """The multiple-choice letter an answer gives, upper-cased; None when it gives none."""
    match = _OPENING.match(text) or _ANSWER_IS.search(text)
    if match:
        return next(group for group in match.groups() if group).upper()
    return None


def normalized(text: str) -> str:
    return " ".join(squad_tokens(text))


def math_equal(answer: str, reference: str) -> bool:
    """math-verify's judgement: the answer's last expression equals the reference's."""
    from math_verify import parse, verify

    gold = parse(reference if "$" in reference or "\\" in reference else f"${reference}$")
    return bool(gold) and bool(verify(gold, parse(answer)))


def tool_calls_valid(text: str, tools) -> bool:
    """At least one call, and every call names one of ``tools`` with arguments its schema accepts."""
    from lora_ft.tool_call_text import parse_tool_calls
    from lora_ft.tool_turns import read_tools, schema_problem

    try:
        listed = read_tools(json.loads(tools) if isinstance(tools, str) else tools) or []
    except Exception:
        return False
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in listed}
    calls = parse_tool_calls(text).calls
    return bool(calls) and all(c.valid and c.name in schemas and schema_problem(schemas[c.name], c.arguments) is None
                               for c in calls)


def length_score(tokens: int, target: int) -> float:
    return max(0.0, 1.0 - abs(tokens - target) / target)


def _against_reference(score: Callable[[str, str], float], column: str):
    def reward(prompts, completions, **columns) -> list[float | None]:
        references = columns.get(column)
        return [None if reference is None else float(score(text_of(c), str(reference)))
                for c, reference in zip(completions, references)]

    return reward


def make(spec) -> Callable:
    """The reward function of a built-in ``spec`` (a :class:`lora_ft.rewards.RewardSpec`)."""
    column = spec.reference_column
    if spec.type == "exact":
        return _against_reference(lambda a, r: a.strip() == r.strip(), column)
    if spec.type == "normalized":
        return _against_reference(lambda a, r: normalized(a) == normalized(r), column)
    if spec.type == "choice":
        return _against_reference(lambda a, r: chosen_letter(a) == (chosen_letter(r) or r.strip().upper()), column)
    if spec.type == "math":
        return _against_reference(math_equal, column)
    if spec.type == "rouge_l":
        return _against_reference(rouge_l, column)
    if spec.type == "regex":
        pattern = re.compile(spec.pattern, re.DOTALL)
        return lambda prompts, completions, **_: [float(bool(pattern.fullmatch(text_of(c).strip())))
                                                  for c in completions]
    if spec.type == "length":
        return lambda prompts, completions, completion_ids, **_: [length_score(len(ids), spec.target)
                                                                  for ids in completion_ids]
    if spec.type == "tool_call":
        def tool_call(prompts, completions, tools=None, **_):
            tools = tools or [None] * len(completions)
            return [float(tool_calls_valid(text_of(c), t)) for c, t in zip(completions, tools)]

        return tool_call
    raise ValueError(f"no built-in reward {spec.type!r}")
