"""Alpaca instructions: ``{"instruction": "...", "input": "...", "output": "..."}`` (``input`` and ``system``
optional)."""

from lora_ft.formats import DataFormat
from lora_ft.samples import RowFault, Sample, required_text

COLUMNS = ("instruction", "output")


def detects(row: dict) -> bool:
    return all(column in row for column in COLUMNS)


def to_sample(row: dict) -> Sample:
    instruction = required_text(row, "instruction", "instruction")
    extra = row.get("input") or ""
    if not isinstance(extra, str):
        raise RowFault(f"'input' is {type(extra).__name__}, not text")
    output = required_text(row, "output", "answer")
    user = f"{instruction.strip()}\n\n{extra.strip()}" if extra.strip() else instruction.strip()
    messages = [{"role": "user", "content": user}, {"role": "assistant", "content": output.strip()}]
    system = row.get("system")
    if isinstance(system, str) and system.strip():
        messages.insert(0, {"role": "system", "content": system.strip()})
    return Sample("", messages=messages)


FORMAT = DataFormat("alpaca", COLUMNS, detects, to_sample, order=30)
