"""Checking the module names the ``lora`` section lists against the model.

PEFT attaches LoRA to every module whose name matches a listed one and says nothing of a listed name that matches
none: it fails only when no name matches at all. A typo in ``lora.target_modules: [q_proj, qproj_typo]`` would
train q_proj alone, silently; a name in ``modules_to_save`` that matches nothing would train nothing in full. Every
listed name must match a module of the model (and, with ``lora.top_n_layers``, a module in those layers).
"""

from __future__ import annotations

import difflib

from lora_ft.errors import Problem, UserError


def matches_target(name: str, target: str) -> bool:
    """PEFT's rule for a list of ``target_modules``: the full module name, or its tail after a dot."""
    return name == target or name.endswith(f".{target}")


def matches_saved(name: str, saved: str) -> bool:
    """PEFT's rule for ``modules_to_save``: the end of the full module name."""
    return name.endswith(saved)


def _closest(name: str, model_names: list[str]) -> str:
    """``; did you mean a or b?`` from the model's module names (the short ones, or full ones for a dotted name)."""
    pool = sorted(set(model_names)) if "." in name else sorted({n.rsplit(".", 1)[-1] for n in model_names})
    close = difflib.get_close_matches(name, pool, n=3, cutoff=0.6)
    if not close:
        return ""
    return "; did you mean " + (close[0] if len(close) == 1 else f"{', '.join(close[:-1])} or {close[-1]}") + "?"


def check_listed_modules(model, target_modules, modules_to_save: list[str], linear: list[str]) -> None:
    """Refuse a name in ``target_modules`` (when a list) or ``modules_to_save`` that matches no module of the
    model, naming the closest module names and the model's linear modules."""
    names = [name for name, _ in model.named_modules() if name]
    problems = []
    listed = target_modules if isinstance(target_modules, list) else []
    for target in listed:
        if not any(matches_target(name, target) for name in names):
            problems.append(Problem(f"'{target}' matches no module of the model{_closest(target, names)}",
                                    "lora.target_modules"))
    for saved in modules_to_save:
        if not any(matches_saved(name, saved) for name in names):
            problems.append(Problem(f"'{saved}' matches no module of the model{_closest(saved, names)}",
                                    "lora.modules_to_save"))
    if problems:
        keys = sorted({p.where for p in problems})
        raise UserError(
            f"{' and '.join(keys)} name{'s' if len(keys) == 1 else ''} "
            f"{'a module' if len(problems) == 1 else 'modules'} this model does not have", problems,
            fix=f"correct or remove {'it' if len(problems) == 1 else 'them'} in {' / '.join(keys)}; this model's "
            f"linear modules (what lora.target_modules: all-linear targets) are: {', '.join(linear)}")


def check_targeted(peft_model, target_modules, top_n_layers: int | None, layers: list[int] | None) -> None:
    """After LoRA is attached to the top ``top_n_layers`` layers: every listed target got LoRA in them (a module
    outside the numbered layers matched by its tail, such as embed_tokens, gets none, and PEFT says nothing; one
    named in full, such as lm_head, still gets its LoRA)."""
    if not isinstance(target_modules, list) or not layers:
        return
    targeted = peft_model.base_model.targeted_module_names
    missed = [t for t in target_modules if not any(matches_target(name, t) for name in targeted)]
    if missed:
        shown = ", ".join(f"'{t}'" for t in missed)
        raise UserError(
            f"lora.target_modules lists {shown}, which {'is' if len(missed) == 1 else 'are'} in none of the top "
            f"{top_n_layers} layer(s) lora.top_n_layers selects (layers {layers[0]} to {layers[-1]}): "
            f"{'it' if len(missed) == 1 else 'they'} would get no LoRA",
            fix=f"remove {shown} from lora.target_modules, or remove lora.top_n_layers to put LoRA on every layer")
