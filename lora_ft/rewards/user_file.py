"""A user's reward function (``type: python``, ``function: path.py:name``): imported only when training starts
(after the config has validated), and every call's result checked, so that a wrong file, name or return value
stops the run with one screen that says which reward and which prompt."""

from __future__ import annotations

import importlib.util
import inspect
import math
import sys
import traceback
from collections.abc import Callable

from lora_ft.errors import UserError
from lora_ft.rewards import RewardSpec, file_problems, function_path


def load_function(spec: RewardSpec, resolve_path) -> Callable:
    """Import the reward's file and return its function; a UserError naming the file for anything wrong."""
    key = f"grpo.rewards ({spec.label})"
    problem = file_problems(spec, resolve_path)
    if problem:
        raise UserError(f"reward function {spec.function}: {problem}", where=key,
                        fix="point `function` at a Python file that defines it (path relative to the config)")
    path, name = function_path(spec, resolve_path)
    module_name = f"lora_ft_reward_{path.stem}_{abs(hash(str(path)))}"
    module = sys.modules.get(module_name)
    if module is None:
        loader_spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(loader_spec)
        try:
            loader_spec.loader.exec_module(module)
        except Exception as exc:
            raise UserError(f"importing {path} failed: {type(exc).__name__}: {exc}", where=key,
                            fix="fix the file so that `python " + str(path) + "` imports it without error\n"
                            + _where_raised(exc, path)) from None
        sys.modules[module_name] = module
    function = getattr(module, name, None)
    if not callable(function):
        raise UserError(f"{path}: `{name}` is not a function", where=key, fix=f"define def {name}(prompts, "
                        "completions, **kwargs) returning one float per completion")
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        return function
    if not any(p.kind is p.VAR_KEYWORD for p in parameters) and "completions" not in {p.name for p in parameters}:
        raise UserError(f"{path}: `{name}` takes neither `completions` nor **kwargs", where=key,
                        fix=f"write it as def {name}(prompts, completions, **kwargs) (TRL's reward-function "
                        "signature); it is called with keyword arguments")
    return function


def _where_raised(exc: BaseException, path) -> str:
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == str(path)]
    return f"  (raised at {path}:{frames[-1].lineno}: {frames[-1].line})" if frames else ""


def checked(function: Callable, label: str) -> Callable:
    """The reward function, its every result checked: a list of numbers (None: not applicable), one per
    completion, none NaN or infinite. A failure names the reward and the prompt that caused it."""

    def reward(prompts, completions, **kwargs):
        try:
            values = function(prompts=prompts, completions=completions, **kwargs)
        except UserError:
            raise
        except Exception as exc:
            raise UserError(f"reward `{label}` raised {type(exc).__name__}: {exc}", where=f"grpo.rewards ({label})",
                            fix="fix the function; it was called with " + _shown_call(prompts, completions, kwargs)
                            + _where_raised_any(exc)) from None
        if not isinstance(values, (list, tuple)) and not _is_array(values):
            raise _bad(label, f"returned {type(values).__name__}, not a list of floats", prompts, completions, 0)
        values = list(values)
        if len(values) != len(completions):
            raise _bad(label, f"returned {len(values)} values for {len(completions)} completions (one float per "
                       "completion is expected)", prompts, completions, 0)
        out = []
        for index, value in enumerate(values):
            if value is None:
                out.append(None)
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) and not _is_number(value):
                raise _bad(label, f"returned {value!r} ({type(value).__name__}) for completion {index}, not a "
                           "float", prompts, completions, index)
            value = float(value)
            if not math.isfinite(value):
                raise _bad(label, f"returned {value} for completion {index}", prompts, completions, index)
            out.append(value)
        return out

    reward.__name__ = label
    return reward


def _is_array(value) -> bool:
    return hasattr(value, "tolist") and hasattr(value, "__len__")


def _is_number(value) -> bool:
    return hasattr(value, "item") and isinstance(getattr(value, "item")(), (int, float))


def _bad(label: str, what: str, prompts, completions, index: int) -> UserError:
    prompt = str(prompts[index]) if index < len(prompts) else ""
    completion = str(completions[index]) if index < len(completions) else ""
    return UserError(f"reward `{label}` {what}", where=f"grpo.rewards ({label})",
                     fix="return a list of floats, one per completion (None where the reward does not apply); it "
                     f"was scoring the prompt {_short(prompt)!r} and the completion {_short(completion)!r}")


def _short(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else "..." + text[-limit:]


def _shown_call(prompts, completions, kwargs) -> str:
    columns = ", ".join(k for k in kwargs if k not in ("trainer_state", "log_extra", "log_metric"))
    return (f"{len(completions)} completions of the prompt {_short(str(prompts[0]) if prompts else '')!r} and the "
            f"columns {columns or 'none'}")


def _where_raised_any(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    return f"\n  (raised at {frames[-1].filename}:{frames[-1].lineno}: {frames[-1].line})" if frames else ""
