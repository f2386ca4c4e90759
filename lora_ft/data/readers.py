"""Reading the rows of data files -- JSON Lines, JSON, CSV, Parquet -- and hub datasets, each row with the file and
line it came from, or the fault that makes it no row at all."""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from lora_ft.samples import RowFault
from lora_ft.errors import UserError

FILE_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")


def display(path: Path) -> str:
    try:
        return os.path.relpath(path)
    except ValueError:
        return str(path)


def _text(path: Path, raw: BinaryIO | None, newline: str | None):
    """The file as UTF-8 text (a byte-order mark skipped), read through ``raw`` when one is given (a stream that
    hashes the bytes it reads: :class:`lora_ft.files.HashedFile`), else opened here."""
    if raw is None:
        return path.open("r", encoding="utf-8-sig", errors="strict", newline=newline)
    return io.TextIOWrapper(raw, encoding="utf-8-sig", errors="strict", newline=newline)


def _read_jsonl(path: Path, raw: BinaryIO | None = None) -> Iterator[tuple[str, Any]]:
    with _text(path, raw, None) as fh:
        yield from _jsonl_rows(display(path), fh)


def _jsonl_rows(shown: str, fh) -> Iterator[tuple[str, Any]]:
    for number, line in enumerate(fh, start=1):
        if not line.strip():
            continue
        location = f"{shown}:{number}"
        try:
            yield location, json.loads(line)
        except json.JSONDecodeError as exc:
            yield location, RowFault(f"invalid JSON ({exc.msg})")
        except RecursionError:
            yield location, RowFault("nested too deeply to be a row (thousands of levels)")


def _read_json(path: Path, raw: BinaryIO | None = None) -> Iterator[tuple[str, Any]]:
    shown = display(path)
    with _text(path, raw, None) as fh:
        text = fh.read()
    try:
        data = json.loads(text)
    except RecursionError:
        raise UserError(f"{shown} nests too deeply to be read (thousands of levels)", where=shown,
                        fix="write one row per line (JSON Lines): a bad row is then dropped and named") from None
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data":  # one object per line in a .json file: read it as JSON Lines
            yield from _jsonl_rows(shown, io.StringIO(text))
            return
        raise UserError(f"{shown} is not valid JSON: {exc.msg}", where=f"{shown}:{exc.lineno}:{exc.colno}",
                        fix="fix the JSON there, or save the data as JSON Lines (one object per line)") from exc
    if isinstance(data, dict):
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise UserError(f"{shown} holds a JSON object, not a list of rows",
                            fix="make the file a JSON array of rows, or JSON Lines")
        data = lists[0]
    if not isinstance(data, list):
        raise UserError(f"{shown} must hold a JSON array of rows", fix="or use JSON Lines")
    # Line numbers of the array's items, found by decoding the text item by item.
    decoder = json.JSONDecoder()
    starts: list[int] = []
    pos = text.find("[") + 1 if text.lstrip().startswith("[") else -1
    if pos > 0:
        try:
            for _ in data:
                while text[pos] in " \t\r\n,":
                    pos += 1
                starts.append(text.count("\n", 0, pos) + 1)
                _, pos = decoder.raw_decode(text, pos)
        except (json.JSONDecodeError, IndexError):
            starts = []
    for index, row in enumerate(data):
        where = f"{shown}:{starts[index]}" if len(starts) == len(data) else f"{shown} item {index}"
        yield where, row


def _read_csv(path: Path, raw: BinaryIO | None = None) -> Iterator[tuple[str, Any]]:
    shown = display(path)
    with _text(path, raw, "") as fh:
        reader = csv.DictReader(fh)
        reader.fieldnames  # reads the header, so the first row's line is counted after it
        line = reader.line_num + 1
        for row in reader:
            if None in row:
                yield f"{shown}:{line}", RowFault("more fields than the header has columns")
            else:
                yield f"{shown}:{line}", {k: v for k, v in row.items() if k is not None}
            line = reader.line_num + 1


def _read_parquet(path: Path, raw: BinaryIO | None = None) -> Iterator[tuple[str, Any]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    shown = display(path)
    try:
        table = pq.read_table(pa.BufferReader(raw.read()) if raw is not None else path)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises many types for a broken file
        raise UserError(f"cannot read Parquet file {shown}: {exc}", fix="check that the file is a complete "
                        "Parquet file") from exc
    for index, row in enumerate(table.to_pylist()):
        yield f"{shown} row {index}", row


READERS = {".jsonl": _read_jsonl, ".json": _read_json, ".csv": _read_csv, ".parquet": _read_parquet}


def read_hub(name: str, split: str) -> Iterator[tuple[str, Any]]:
    try:
        import datasets

        dataset = datasets.load_dataset(name, split=split)
    except Exception as exc:  # noqa: BLE001 - the hub client raises many types
        raise UserError(f"cannot load dataset '{name}' (split {split}) from the dataset hub: {exc}",
                        fix="check the name and your connection, or download it and point data.path at the files"
                        ) from exc
    for index, row in enumerate(dataset):
        yield f"{name}[{split}] row {index}", row


def first_non_utf8(path: Path) -> tuple[int, int]:
    """The line (1-based) and file offset of the first byte that is not valid UTF-8."""
    raw = path.read_bytes()
    try:
        raw.decode("utf-8")
        return 1, 0
    except UnicodeDecodeError as exc:
        return raw.count(b"\n", 0, exc.start) + 1, exc.start
