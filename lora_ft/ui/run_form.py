"""The new-run form: its fields read from the config schema, its values written as a config file, and that file
checked by the same loader as ``lora-ft validate`` (so a fault reads the same, with the same file and line).

The form holds the settings people change; every other key keeps the schema's default, and any key at all can be
set in its "more settings" box as ``KEY=VALUE`` lines, as ``--set`` takes them.
"""

from __future__ import annotations

import re
import types
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel

from lora_ft.config import EMBEDDED_MODEL, RunConfig, dump_config, load_config, looks_like_hub_id
from lora_ft.config.overrides import apply_override, parse_override
from lora_ft.errors import UserError

# the settings people change, in the order the form shows them (list items by index, as --set names them)
FORM_KEYS = ("model.base", "method", "data.train.0.path", "data.eval.0.path", "model.quantization", "lora.r",
             "lora.alpha", "train.epochs", "train.max_steps", "train.learning_rate", "train.batch_size",
             "train.gradient_accumulation_steps", "data.max_seq_length")
PATH_KEYS = ("model.base", "data.train.0.path", "data.eval.0.path")
OPTIONAL_KEYS = ("data.eval.0.path",)  # blank: no such entry (the run holds out data.eval_fraction instead)
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


@dataclass
class FormField:
    key: str
    kind: str  # "choice", "int", "float", "text" or "flag"
    default: Any
    choices: tuple = ()
    info: str = ""  # the schema's description, shown under the field
    optional: bool = False  # may be left blank (the schema's null, or an entry left out)

    @property
    def label(self) -> str:
        return self.key.replace(".0.", "[0].")


def _plain(annotation: Any) -> tuple[Any, bool]:
    """The annotation without Annotated and None, and whether None was allowed."""
    if get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    if get_origin(annotation) in (Union, types.UnionType):
        options = [a for a in get_args(annotation) if a is not type(None)]
        optional = len(options) < len(get_args(annotation))
        inner, _ = _plain(options[0]) if len(options) == 1 else (annotation, False)
        return inner, optional
    return annotation, False


def schema_field(key: str) -> FormField:
    """The form field for a dotted config key, read from the schema: its type, default, choices and description."""
    model: type[BaseModel] = RunConfig
    parts = [p for p in key.split(".") if not p.isdigit()]
    for part in parts[:-1]:
        annotation, _ = _plain(model.model_fields[part].annotation)
        if get_origin(annotation) is list:
            annotation = get_args(annotation)[0]
        model = annotation
    info = model.model_fields[parts[-1]]
    annotation, optional = _plain(info.annotation)
    default = None if info.is_required() else info.get_default(call_default_factory=True)
    if get_origin(annotation) is Literal:
        field = FormField(key, "choice", default, tuple(get_args(annotation)))
    elif annotation is bool:
        field = FormField(key, "flag", default)
    elif annotation in (int, float):
        field = FormField(key, annotation.__name__, default)
    else:
        field = FormField(key, "text", default if default is not None else "")
    description = (info.description or "").replace("`", "")
    field.info = description.split(". ")[0].rstrip(".") + "."  # its first sentence; docs/config.md has the rest
    field.optional = optional or key in OPTIONAL_KEYS
    return field


def form_fields() -> list[FormField]:
    return [schema_field(key) for key in FORM_KEYS]


def _as_path(value: str, here: Path) -> str:
    """A path typed in the form, made absolute against the folder the page was started from (the config file is
    written elsewhere, and a relative path in it would be read against that file's folder). A hub id, or the
    embedded model, stays as it is."""
    value = value.strip()
    if not value or value == EMBEDDED_MODEL or Path(value).is_absolute():
        return value
    candidate = (here / Path(value).expanduser()).resolve()
    if not candidate.exists() and looks_like_hub_id(value):
        return value
    return str(candidate)


def _put(node: dict | list, parts: list, value: Any) -> None:
    """Set a nested key, making the mappings and list entries on its way (``data.train.0.path``)."""
    for part, after in zip(parts, parts[1:]):
        empty: dict | list = [] if isinstance(after, int) else {}
        if isinstance(part, int):
            while len(node) <= part:
                node.append(type(empty)())
        elif part not in node:
            node[part] = empty
        node = node[part]
    node[parts[-1]] = value


def config_data(values: dict[str, Any], more: str, output_dir: Path, here: Path) -> dict:
    """The config the form describes, as the mapping its YAML file holds."""
    data: dict = {"output_dir": str(output_dir)}
    fields = {f.key: f for f in form_fields()}
    for key, value in values.items():
        field = fields[key]
        if isinstance(value, str):
            value = _as_path(value, here) if key in PATH_KEYS else value.strip()
        if value in ("", None):
            if field.optional:
                continue
            value = "" if field.kind == "text" else value
        if field.kind == "int" and isinstance(value, float) and value.is_integer():
            value = int(value)
        _put(data, [int(p) if p.isdigit() else p for p in key.split(".")], value)
    for line in more.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            parts, value = parse_override(line.strip())
            apply_override(data, parts, value, line.strip())
    return data


def write_config(path: Path, data: dict) -> Path:
    """The form's config as a YAML file (the file `lora-ft train` is then given)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("# written by lora-ft ui's new-run form\n" + yaml.safe_dump(data, sort_keys=False),
                    encoding="utf-8")
    return path


def check_name(name: str, runs_dir: Path) -> str:
    """The new run's folder name, refused when it is not a plain name or the run exists."""
    name = name.strip()
    if not NAME.match(name):
        raise UserError(f"run name {name!r} is not a plain folder name",
                        fix="use letters, digits, '.', '-' and '_' (e.g. legal-r16), starting with a letter or digit")
    if (Path(runs_dir) / name).exists():
        raise UserError(f"{Path(runs_dir) / name} already exists",
                        fix="choose another name; to train an interrupted run on, use its Resume button")
    return name


def validate(path: Path) -> tuple[bool, str]:
    """``lora-ft validate PATH``'s verdict: the config with every default filled in, or its one-screen error."""
    try:
        loaded = load_config(path)
    except UserError as exc:
        return False, exc.render()
    return True, dump_config(loaded.config).rstrip() + f"\nconfig OK: {path}"


def plan(path: Path, timeout: float = 600) -> tuple[bool, str]:
    """``lora-ft plan PATH``'s estimate (peak memory, time per epoch, whether it fits), as the command prints it."""
    try:
        done = subprocess.run([sys.executable, "-m", "lora_ft", "plan", str(path)], capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return False, f"error: lora-ft plan {path} took longer than {timeout:.0f} s"
    # the plan is on standard output; standard error holds the one-screen error when there is one (and library
    # notices otherwise, which say nothing about the plan)
    text = done.stdout.strip() if done.returncode in (0, 2) and done.stdout.strip() else done.stderr.strip()
    return done.returncode == 0, text
