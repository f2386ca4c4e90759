"""`--set KEY=VALUE`: command-line overrides applied to the YAML data before it is validated."""

from __future__ import annotations

from typing import Any

import yaml

from lora_ft.config.keys import dotted
from lora_ft.errors import UserError


def parse_override(text: str) -> tuple[list[str | int], Any]:
    if "=" not in text:
        raise UserError(
            f"--set {text!r} has no '='",
            fix="write overrides as KEY=VALUE, for example --set train.learning_rate=1e-4",
        )
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise UserError(f"--set {text!r} has an empty key", fix="for example --set train.max_steps=20")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise UserError(f"--set {text!r}: the value is not valid YAML ({exc})", fix="quote the value") from exc
    parts: list[str | int] = [int(p) if p.isascii() and p.isdigit() else p for p in key.split(".")]
    return parts, value


def apply_override(data: dict, parts: list[str | int], value: Any, text: str) -> None:
    node: Any = data
    for i, part in enumerate(parts[:-1]):
        nxt = parts[i + 1]
        if isinstance(node, list):
            if not isinstance(part, int) or part >= len(node):
                raise UserError(f"--set {text}: index {part} is out of range", fix="check the list's length")
            node = node[part]
            continue
        if not isinstance(node, dict):
            raise UserError(f"--set {text}: {dotted(tuple(parts[:i]))} is not a section")
        if node.get(part) is None:
            node[part] = [] if isinstance(nxt, int) else {}
        node = node[part]
    last = parts[-1]
    if isinstance(node, list):
        if not isinstance(last, int) or last > len(node):
            raise UserError(f"--set {text}: index {last} is out of range", fix="check the list's length")
        if last == len(node):
            node.append(value)
        else:
            node[last] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise UserError(f"--set {text}: {dotted(tuple(parts[:-1]))} is not a section")


