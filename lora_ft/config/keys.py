"""Where a config key was written: its dotted name, and its file and line (or the `--set` that gave it)."""

from __future__ import annotations

from typing import Union

KeyPath = tuple[Union[str, int], ...]


def dotted(path: KeyPath) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out



def where(loc: KeyPath, lines: dict[KeyPath, int], source: str, override_keys: dict[KeyPath, str]) -> str:
    for n in range(len(loc), -1, -1):
        if loc[:n] in override_keys:
            return f"--set {override_keys[loc[:n]]}"
        if n and loc[:n] in lines:
            return f"{source}:{lines[loc[:n]]} ({dotted(loc)})"
    return f"{source} ({dotted(loc)})" if loc else source


