"""Checksums of a tokenized-data entry: written with it, checked each time it is opened.

When an entry is published its meta file (written last, before the folder is renamed into place) records each of
its files' size and XXH3-128 checksum and each split's row count, and a checksum of the meta file's own content.
Opening the entry checks them all: a flipped bit, a file cut short (at a record-batch boundary, which Arrow would
read as a whole, shorter file), a missing file or an edited meta file is found before a row is used, and named.
XXH3 reads several GB/s, so checking a 1M-row entry (about 2 GB) costs a fraction of a second
(docs/benchmarks.md); it guards against damage (a disk fault, a cut copy, a hand edit), not against someone who
sets out to forge an entry.
"""

from __future__ import annotations

import json
from pathlib import Path

import xxhash

from lora_ft.files import HASH_BLOCK

CHECKSUM = "xxh3_128"
SELF = "meta_checksum"  # the meta file's checksum of its own content, this field left out


def file_checksum(path: Path) -> str:
    digest = xxhash.xxh3_128()
    block = bytearray(HASH_BLOCK)
    view = memoryview(block)
    with Path(path).open("rb", buffering=0) as fh:
        while count := fh.readinto(block):
            digest.update(view[:count])
    return digest.hexdigest()


def text_checksum(text: str) -> str:
    return xxhash.xxh3_128_hexdigest(text.encode())


def _meta_checksum(meta: dict) -> str:
    return text_checksum(json.dumps({k: v for k, v in meta.items() if k != SELF}, sort_keys=True))


def seal(folder: Path, meta: dict, rows: dict[str, int]) -> None:
    """Record in ``meta`` the checksums of the entry's files in ``folder`` and its splits' row counts (``rows``:
    split name -> rows), then the meta's own checksum; the caller writes the meta file next."""
    meta["files"] = {path.name: {"bytes": path.stat().st_size, CHECKSUM: file_checksum(path)}
                     for path in sorted(folder.glob("*.arrow"))}
    meta["rows"] = dict(rows)
    meta[SELF] = _meta_checksum(meta)


def damage(folder: Path, meta: dict) -> str | None:
    """What is wrong with the entry in ``folder`` whose meta file holds ``meta``, in words naming the file, or None
    when every file is as it was written."""
    if meta.get(SELF) != _meta_checksum(meta) or not isinstance(meta.get("files"), dict):
        return "meta.json differs from what was written (its checksum does not match)"
    for name, written in sorted(meta["files"].items()):
        path = folder / name
        try:
            size = path.stat().st_size
        except OSError:
            return f"{name} is missing"
        if size != written["bytes"]:
            return f"{name} holds {size:,} bytes where {written['bytes']:,} were written"
        if file_checksum(path) != written[CHECKSUM]:
            return f"{name} differs from what was written (its checksum does not match)"
    unknown = sorted(p.name for p in folder.glob("*.arrow") if p.name not in meta["files"])
    return f"{unknown[0]} was not written with the entry" if unknown else None


def rows_damage(meta: dict, rows: dict[str, int]) -> str | None:
    """The split whose rows, as read (``rows``), are not the count written, in words; None when all are."""
    for name, count in sorted(rows.items()):
        written = meta.get("rows", {}).get(name)
        if written != count:
            return f"{name}.arrow reads as {count:,} rows where {written:,} were written" if written is not None \
                else f"{name}.arrow was not written with the entry"
    return None


def sealed_text(value: dict) -> str:
    """A small JSON file (a memo kept in an entry) with its own checksum, for :func:`unsealed`."""
    body = json.dumps(value, sort_keys=True)
    return json.dumps({"value": value, CHECKSUM: text_checksum(body)}, indent=1)


def unsealed(text: str) -> dict | None:
    """The value :func:`sealed_text` wrote, or None when the text is not whole."""
    try:
        wrapper = json.loads(text)
        value = wrapper["value"]
        whole = wrapper[CHECKSUM] == text_checksum(json.dumps(value, sort_keys=True))
    except (ValueError, KeyError, TypeError):
        return None
    return value if whole and isinstance(value, dict) else None
