"""The reward functions TRL's GRPO trainer calls, built from the run's ``grpo.rewards``: each built-in or user
function wrapped so that its results are checked, under the name its figures are logged by, with its weight."""

from __future__ import annotations

from collections.abc import Callable

from lora_ft.rewards import RewardSpec, builtin
from lora_ft.rewards.user_file import checked, load_function


def reward_functions(specs: list[RewardSpec], resolve_path) -> tuple[list[Callable], list[float]]:
    """The checked functions and their weights, in the config's order. A user's file is imported here."""
    functions = []
    for spec in specs:
        raw = load_function(spec, resolve_path) if spec.type == "python" else builtin.make(spec)
        functions.append(checked(raw, spec.label))
    return functions, [spec.weight for spec in specs]


def score(specs: list[RewardSpec], functions: list[Callable], prompts: list[str], completions: list[str],
          completion_ids: list[list[int]], columns: dict[str, list]) -> list[dict[str, float | None]]:
    """Each completion's rewards by name and their weighted total (a held-out evaluation's scores)."""
    per_reward = {spec.label: function(prompts=prompts, completions=completions, completion_ids=completion_ids,
                                       **columns)
                  for spec, function in zip(specs, functions)}
    rows = []
    for index in range(len(completions)):
        row = {label: values[index] for label, values in per_reward.items()}
        present = [(spec.weight, row[spec.label]) for spec in specs if row[spec.label] is not None]
        row["total"] = sum(w * v for w, v in present) if present else None
        rows.append(row)
    return rows
