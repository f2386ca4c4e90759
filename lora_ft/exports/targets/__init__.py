"""The export targets, each one module in this folder that defines ``TARGET`` (an :class:`ExportTarget`).

Adding a target (a serving engine or a file format) is adding a file here: ``lora-ft export --format NAME`` offers
it, with the flags it adds, and runs it under the run's lock (``commands/export.py``). The target writes its folder
so that it appears whole or not at all (:func:`lora_ft.files.staged_directory`, as the shipped targets do) and
returns the check that ends every export (:func:`lora_ft.exports.checks.write_check`). A target module stays light
at import (heavy libraries inside its functions), so ``--help`` stays instant.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from lora_ft.plugins import discover


@dataclass(frozen=True)
class ExportTarget:
    name: str
    help: str  # what it is for, in a few words (``lora-ft export --help``)
    export: Callable[..., dict]  # (finished run, out dir, parsed args) -> the export check, as written next to it
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None  # flags of its own


@cache
def registry() -> dict[str, ExportTarget]:
    """Every target in this folder, by name."""
    return {target.name: target for target in sorted(discover(__name__, __path__, "TARGET"), key=lambda t: t.name)}


def register(target: ExportTarget) -> None:
    """Add a target from outside this folder (a plugin, or a test)."""
    registry()[target.name] = target


def export(name: str, run, out_dir: Path, args: argparse.Namespace) -> dict:
    return registry()[name].export(run, Path(out_dir), args)
