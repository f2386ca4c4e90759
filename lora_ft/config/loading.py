"""Loading a config: YAML with every key's line, `--set` overrides, validation, and faults named by file and line.

Loading never imports torch or any other heavy library, so ``lora-ft validate`` is instant and every fault in a
config is reported, with its file, line and key, before anything heavy happens.
"""

from __future__ import annotations

import difflib
import json
import re
from pathlib import Path
from typing import Any, get_args

import yaml
from pydantic import BaseModel, ValidationError

from lora_ft.config.checks import check_consistency
from lora_ft.config.keys import KeyPath, dotted, where
from lora_ft.config.loaded import LoadedConfig
from lora_ft.config.overrides import apply_override, parse_override
from lora_ft.config.schema import RunConfig
from lora_ft.errors import Problem, UserError


# A config is a few hundred values. YAML aliases (&name / *name) can make a 2 KB file stand for billions of them
# ("billion laughs"); counting values as they expand stops such a file at once instead of after gigabytes.
MAX_CONFIG_VALUES = 100_000


class ConfigTooLarge(Exception):
    def __init__(self, line: int) -> None:
        super().__init__(line)
        self.line = line


def _yaml_key_lines(text: str) -> tuple[dict[KeyPath, int], list[tuple[KeyPath, int]]]:
    """Map every key path in a YAML document to its line (1-based); also list duplicated keys.

    Raises :class:`ConfigTooLarge` (with the line being expanded) past ``MAX_CONFIG_VALUES`` values."""
    lines: dict[KeyPath, int] = {}
    duplicates: list[tuple[KeyPath, int]] = []
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    visited = [0]

    def walk(node: Any, path: KeyPath) -> None:
        visited[0] += 1
        if visited[0] > MAX_CONFIG_VALUES or len(path) > 50:
            raise ConfigTooLarge(node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            seen: set[str] = set()
            for key_node, value_node in node.value:
                key = key_node.value
                child = path + (key,)
                if key in seen:
                    duplicates.append((child, key_node.start_mark.line + 1))
                seen.add(key)
                lines[child] = key_node.start_mark.line + 1
                walk(value_node, child)
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                child = path + (index,)
                lines[child] = item.start_mark.line + 1
                walk(item, child)

    if root is not None:
        walk(root, ())
    return lines, duplicates


def _section_model_at(path: KeyPath) -> type[BaseModel] | None:
    """The pydantic model that owns the keys at ``path`` (for 'did you mean' suggestions)."""
    model: type[BaseModel] = RunConfig
    for part in path:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        if field is None:
            return None
        annotation = field.annotation
        candidates = [annotation, *get_args(annotation)]
        for arg in list(candidates):
            candidates.extend(get_args(arg))
        found = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if found is None:
            return None
        model = found
    return model


_UNION_TAG = re.compile(r"[\w-]+\[.*\]")


def _key_path(loc: tuple, data: Any) -> KeyPath:
    """A pydantic error location as the user's key path: union members add tags such as 'list[str]'; drop them."""
    path: list[str | int] = []
    node = data
    for part in loc:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
        elif isinstance(part, str) and _UNION_TAG.fullmatch(part):
            continue
        else:
            node = None
        path.append(part)
    return tuple(path)


def _describe_validation_error(
    exc: ValidationError, data: Any, lines: dict[KeyPath, int], source: str, override_keys: dict[KeyPath, str]
) -> list[Problem]:
    problems: list[Problem] = []
    seen: dict[KeyPath, Problem] = {}
    for err in exc.errors():
        loc = _key_path(err["loc"], data)
        key = dotted(loc) or "(top level)"
        location = where(loc, lines, source, override_keys)
        kind = err["type"]
        if kind == "extra_forbidden":
            owner = _section_model_at(loc[:-1])
            allowed = sorted(owner.model_fields) if owner else []
            guess = difflib.get_close_matches(str(loc[-1]), allowed, n=1, cutoff=0.5)
            fix = f"did you mean '{guess[0]}'?" if guess else f"allowed keys here: {', '.join(allowed)}"
            problems.append(Problem(f"unknown key '{key}'", location, fix))
        elif kind == "missing":
            problems.append(Problem(f"required key '{key}' is missing", location, "add it (see docs/config.md)"))
        elif loc in seen:  # another member of a union failed too: one problem, both reasons
            seen[loc].what += f", or {err['msg'][0].lower()}{err['msg'][1:]}"
        else:
            got = err.get("input")
            shown = json.dumps(got) if isinstance(got, (str, int, float, bool)) or got is None else type(got).__name__
            seen[loc] = Problem(f"'{key}' = {shown}: {err['msg']}", location, _fix_for(err))
            problems.append(seen[loc])
    return problems


def _fix_for(err: dict) -> str:
    kind = err["type"]
    if kind.startswith(("greater_than", "less_than")):
        return "use a value in the allowed range"
    if kind in ("literal_error", "enum"):
        return "use one of the listed values"
    if kind in ("int_parsing", "int_type", "int_from_float"):
        return "use a whole number"
    if kind in ("float_parsing", "float_type"):
        return "use a number, for example 2e-4"
    if kind in ("bool_parsing", "bool_type"):
        return "use true or false"
    if kind == "number_not_bool":
        return "write a number (true and false are not numbers), or null where the key allows it"
    if kind in ("list_type",):
        return "use a YAML list, for example [a, b]"
    if kind in ("model_type", "dict_type", "model_attributes_type"):
        return "this key holds a section of keys (a YAML mapping)"
    if kind in ("string_type",):
        return "use a string (quote it)"
    if kind == "too_short":
        return "give at least one entry"
    return "see docs/config.md"


def load_config(path: str | Path | None, overrides: list[str] | None = None, *,
                text: str | None = None) -> LoadedConfig:
    """Read, override and validate a config; raise :class:`UserError` listing every fault."""
    overrides = list(overrides or [])
    source = str(path) if path is not None else "<config>"
    cfg_path: Path | None = None
    if text is None:
        if path is None:
            raise UserError("no config file given", fix="lora-ft train configs/legal_domain.yaml")
        cfg_path = Path(path)
        if not cfg_path.is_file():
            hint = "check the path" if not cfg_path.exists() else "give a YAML file, not a directory"
            raise UserError(f"config file not found: {path}", fix=hint)
        try:
            text = cfg_path.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"cannot read config file {path}: {exc}") from exc
    try:
        lines, duplicates = _yaml_key_lines(text)  # first: it bounds what the aliases expand to
        data = yaml.safe_load(text)
    except ConfigTooLarge as exc:
        raise UserError(f"the config expands to more than {MAX_CONFIG_VALUES:,} values or nests more than 50 "
                        "levels deep (through YAML aliases, &name / *name); a lora-ft config has a few hundred",
                        where=f"{source}:{exc.line}",
                        fix="write the values out, or use each alias only where one value is repeated") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        problem = getattr(exc, "problem", None) or str(exc)
        raise UserError(f"the config is not valid YAML: {problem}", where=where,
                        fix="check indentation and quoting near that line") from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError("the config must be a YAML mapping of sections (model:, lora:, data:, train:, ...)",
                        where=source)

    problems = [
        Problem(f"key '{dotted(key)}' appears twice; the second would silently win", f"{source}:{line}",
                "keep one of them")
        for key, line in duplicates
    ]
    override_keys: dict[KeyPath, str] = {}
    for item in overrides:
        parts, value = parse_override(item)
        apply_override(data, parts, value, item)
        override_keys[tuple(parts)] = item

    try:
        config = RunConfig.model_validate(data)
    except ValidationError as exc:
        problems += _describe_validation_error(exc, data, lines, source, override_keys)
        raise UserError(f"{len(problems)} problem(s) in config {source}", problems) from None
    loaded = LoadedConfig(config, cfg_path, overrides)
    problems += check_consistency(loaded, lines, source, override_keys)
    if problems:
        raise UserError(f"{len(problems)} problem(s) in config {source}", problems)
    return loaded


def dump_config(config: RunConfig) -> str:
    """The config as YAML, keys in schema order."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False, allow_unicode=True, width=100)


