"""The data formats, each one module in this folder that defines ``FORMAT`` (a :class:`DataFormat`).

Adding a format is adding a file here: it is found by name, detected from a row's columns (in ``order``), offered
in ``data.train[].format`` and in the error that lists the formats. Modules whose names start with ``_`` are not
formats. Nothing here imports more than the standard library.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

from lora_ft.samples import RowFault, Sample
from lora_ft.plugins import discover


@dataclass(frozen=True)
class DataFormat:
    name: str
    columns: tuple[str, ...]  # the columns a row of this format has (what `columns:` renames to)
    detects: Callable[[dict], bool]  # whether a row (columns renamed) is in this format
    to_sample: Callable[[dict], Sample]  # the row as a Sample; raises RowFault for an unusable row
    order: int = 50  # detection order: lower is tried first (a more specific format before a looser one)
    kind: str = "sft"  # what the rows are: "sft" (examples), "pairs" (chosen and rejected), "unpaired" (labelled)


@cache
def registry() -> dict[str, DataFormat]:
    """Every format in this folder, by name, in detection order."""
    found = discover(__name__, __path__, "FORMAT")
    return {fmt.name: fmt for fmt in sorted(found, key=lambda f: (f.order, f.name))}


def register(fmt: DataFormat) -> None:
    """Add a format from outside this folder (a plugin, or a test)."""
    registry()[fmt.name] = fmt


def format_names(kinds: tuple[str, ...] | None = None) -> list[str]:
    return [name for name, fmt in registry().items() if kinds is None or fmt.kind in kinds]


def detect_format(row: dict, kinds: tuple[str, ...] | None = None) -> str | None:
    """The first format of these kinds, in detection order, that recognises this row; None when none does."""
    return next((fmt.name for fmt in registry().values() if (kinds is None or fmt.kind in kinds)
                 and fmt.detects(row)), None)


def normalize_row(row: Any, fmt: str) -> Sample:
    """Turn one row of a known format into a Sample (location filled in by the caller)."""
    if not isinstance(row, dict):
        raise RowFault("row is not an object")
    return registry()[fmt].to_sample(row)
