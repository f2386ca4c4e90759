"""The rewards of an RL run (``grpo.rewards`` in a config): each a built-in check of what users verify most, or a
function of the user's own in a Python file, with its weight.

This module holds the settings only (no heavy import, so ``lora-ft validate`` stays instant, and nothing of the
user's is imported: :func:`file_problems` reads their file's syntax without running it). The checks are in
:mod:`lora_ft.rewards.builtin`, the loading and checking of a user's function in :mod:`lora_ft.rewards.user_file`,
and the list TRL's trainer calls in :mod:`lora_ft.rewards.functions`.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from lora_ft.sections import Section

# each built-in: what it scores, in words (docs/config.md and the model card say it)
BUILTINS = {
    "exact": "1 when the answer, stripped, equals the reference column's text, else 0",
    "normalized": "1 when the answer equals the reference after lower-casing and dropping punctuation, articles and "
                  "extra spaces (SQuAD's normalization), else 0",
    "choice": "1 when the multiple-choice letter the answer gives (A-J: `B`, `(B)`, `B.`, `Answer: B`) is the "
              "reference's letter, else 0",
    "math": "1 when the answer's final mathematical expression equals the reference, as math-verify decides "
            "(numbers, fractions, LaTeX, sets, intervals), else 0",
    "regex": "1 when the whole answer (stripped) matches `pattern`, else 0: a format reward",
    "tool_call": "1 when the answer makes at least one tool call and every call names a tool of the row's `tools` "
                 "with arguments its JSON schema accepts, else 0",
    "length": "1 at `target` tokens, falling linearly to 0 at no tokens or at twice the target",
    "rouge_l": "ROUGE-L F1 of the answer against the reference column's text (0 to 1)",
    "python": "the user's own function (`function: path.py:name`, TRL's reward-function signature)",
}
REFERENCE_TYPES = ("exact", "normalized", "choice", "math", "rouge_l")
FUNCTION_FORM = re.compile(r"^(?P<path>.+\.py):(?P<name>[A-Za-z_][A-Za-z0-9_]*)$")


class RewardSpec(Section):
    """One reward: a built-in check or the user's function, and its weight in the total."""

    type: Literal[tuple(BUILTINS)] = Field(  # type: ignore[valid-type]
        description="What scores the answer: " + "; ".join(f"`{k}`: {v}" for k, v in BUILTINS.items()) + ".")
    weight: float = Field(1.0, description="Its weight in the total reward (the weighted sum of every reward).")
    column: str | None = Field(None, description="The data column holding the reference answer (`exact`, "
                               "`normalized`, `choice`, `math`, `rouge_l`; default `answer`).")
    pattern: str | None = Field(None, description="`regex`: the regular expression the whole answer must match "
                                "(Python syntax; `.` also matches newlines).")
    target: int | None = Field(None, ge=1, description="`length`: the answer length, in tokens, that scores 1.")
    function: str | None = Field(None, description="`python`: `path/to/file.py:function_name` (the path relative "
                                 "to the config file). The function takes `prompts`, `completions`, "
                                 "`completion_ids` and the data's other columns as keyword lists and returns one "
                                 "float per completion (None: not applicable). The file is imported only when "
                                 "training starts, after the config has validated.")
    name: str | None = Field(None, description="The name its figures are logged under (default: the type, or the "
                             "function's name).")

    @model_validator(mode="after")
    def _settings_of_its_type(self):
        needs = {"regex": "pattern", "length": "target", "python": "function"}
        wanted = needs.get(self.type)
        if wanted and getattr(self, wanted) is None:
            raise ValueError(f"a `{self.type}` reward needs `{wanted}`")
        for key in ("pattern", "target", "function"):
            if getattr(self, key) is not None and key != wanted:
                raise ValueError(f"`{key}` applies to a `{ {v: k for k, v in needs.items()}[key]}` reward, not "
                                 f"`{self.type}`")
        if self.column is not None and self.type not in REFERENCE_TYPES:
            raise ValueError(f"`column` applies to {', '.join(REFERENCE_TYPES)} rewards, not `{self.type}`")
        if self.pattern is not None:
            try:
                re.compile(self.pattern)
            except re.error as exc:
                raise ValueError(f"`pattern` is not a valid regular expression: {exc}") from None
        if self.function is not None and not FUNCTION_FORM.match(self.function):
            raise ValueError(f"`function` is {self.function!r}; write it as path/to/file.py:function_name")
        return self

    @property
    def reference_column(self) -> str | None:
        return (self.column or "answer") if self.type in REFERENCE_TYPES else None

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        if self.type == "python":
            return FUNCTION_FORM.match(self.function).group("name")
        return self.type

    def describe(self) -> str:
        """The reward in a few words, for the model card and the run's story."""
        what = {"python": f"`{self.function}`", "regex": f"regex `{self.pattern}`",
                "length": f"length target {self.target} tokens"}.get(self.type, f"`{self.type}`")
        reference = f" against column `{self.reference_column}`" if self.reference_column else ""
        return f"{self.label}: {what}{reference}, weight {self.weight:g}"


def function_path(spec: RewardSpec, resolve_path) -> tuple[Path, str]:
    """A ``python`` reward's file (resolved against the config's folder) and function name."""
    match = FUNCTION_FORM.match(spec.function)
    return Path(resolve_path(match.group("path"))), match.group("name")


def file_problems(spec: RewardSpec, resolve_path) -> str | None:
    """What is wrong with a ``python`` reward's file, read without importing it: missing, not Python, or without
    a top-level function of that name; None when it looks right."""
    path, name = function_path(spec, resolve_path)
    if not path.is_file():
        return f"{path} does not exist"
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except SyntaxError as exc:
        return f"{path}:{exc.lineno} is not valid Python: {exc.msg}"
    except UnicodeDecodeError:
        return f"{path} is not UTF-8 text"
    defined = {node.name for node in tree.body if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))}
    assigned = {target.id for node in tree.body if isinstance(node, ast.Assign) for target in node.targets
                if isinstance(target, ast.Name)}
    if name not in defined | assigned:
        shown = ", ".join(sorted(defined)) or "none"
        return f"{path} defines no function `{name}` (its functions: {shown})"
    return None
