"""Reading instruction data: files, formats and faults.

Every row becomes a :class:`Sample` -- a conversation (``messages``) or raw ``text`` -- that knows the file and
line it came from. Rows that cannot be used are not fatal one by one: each is counted with its reason and
location in a :class:`DatasetReport`, and the run stops only when too few rows remain. Turning samples into
tokens and labels is :mod:`lora_ft.data.tokenization`'s job.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from lora_ft.config import DatasetSource, LoadedConfig, looks_like_hub_id
from lora_ft.errors import Problem, UserError
from lora_ft.formats import detect_format, format_names, normalize_row, registry
from lora_ft.methods import method_of, registry as methods
from lora_ft.samples import RowFault, Sample
from lora_ft.data.readers import FILE_SUFFIXES, READERS, display, first_non_utf8, read_hub
from lora_ft.files import file_sha256

@dataclass
class DatasetReport:
    """What happened to one dataset's rows."""

    path: str
    format: str = "?"
    column_map: dict[str, str] = field(default_factory=dict)
    rows_read: int = 0
    kept: int = 0
    dropped: dict[str, list[str]] = field(default_factory=dict)  # reason -> locations
    sha256: str | None = None

    def drop(self, reason: str, location: str) -> None:
        self.dropped.setdefault(reason, []).append(location)

    @property
    def dropped_count(self) -> int:
        return sum(len(v) for v in self.dropped.values())

    def summary_lines(self, max_locations: int = 3) -> list[str]:
        mapping = ", ".join(f"{k}<-{v}" for k, v in self.column_map.items())
        lines = [
            f"{self.path}: format {self.format}{f' (columns {mapping})' if mapping else ''}; "
            f"{self.rows_read} rows read, {self.kept} kept, {self.dropped_count} dropped"
        ]
        for reason, locations in sorted(self.dropped.items(), key=lambda kv: -len(kv[1])):
            shown = ", ".join(locations[:max_locations]) + (" ..." if len(locations) > max_locations else "")
            lines.append(f"  dropped {len(locations)}: {reason} [{shown}]")
        return lines


# ---------------------------------------------------------------------------------------------------------------
# Reading rows


def data_files(source: DatasetSource, loaded: LoadedConfig) -> list[Path]:
    """The local files a dataset entry names (empty for a hub name)."""
    path = loaded.resolve_path(source.path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in FILE_SUFFIXES)
        if not files:
            raise UserError(f"the data directory {source.path} holds no {', '.join(FILE_SUFFIXES)} files",
                            fix="put the data files there or point data.path at a file", settings=("data.path",))
        return files
    if path.is_file():
        if path.suffix.lower() not in FILE_SUFFIXES:
            raise UserError(f"unsupported data file type '{path.suffix}' ({source.path})",
                            fix=f"use one of {', '.join(FILE_SUFFIXES)}")
        return [path]
    if looks_like_hub_id(source.path):
        return []
    raise UserError(f"data file not found: {source.path}", fix=f"looked for {path}")


def _check_encodable(sample: Sample) -> None:
    """JSON can spell a lone UTF-16 surrogate (``"\\ud800"``), which no tokenizer can encode."""
    turns = [*(sample.messages or []), *(sample.chosen or []), *(sample.rejected or [])]
    texts = [sample.text] if sample.text is not None else [m["content"] for m in turns]
    for text in texts:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise RowFault(f"text holds an invalid character ({text[exc.start]!r}, a lone UTF-16 surrogate)") \
                from None


def _rename(row: Any, columns: dict[str, str]) -> Any:
    if not columns or not isinstance(row, dict):
        return row
    renamed = dict(row)
    for expected, actual in columns.items():
        if actual in renamed:
            renamed[expected] = renamed.pop(actual)
    return renamed


def source_report(source: DatasetSource, files: list[Path], hashes: dict[Path, str] | None = None) -> DatasetReport:
    """An empty report for one dataset entry, with the hash of its files' contents (``hashes``: each file's SHA-256,
    already read; else each file is read now)."""
    report = DatasetReport(path=source.path, column_map=dict(source.columns))
    sha = hashes.__getitem__ if hashes is not None else file_sha256
    if len(files) == 1:
        report.sha256 = sha(files[0])
    elif files:
        digest = hashlib.sha256()
        for f in files:
            digest.update(f"{f.name}:{sha(f)}\n".encode())
        report.sha256 = digest.hexdigest()
    return report


def _open_binary(path: Path) -> BinaryIO:
    return path.open("rb")


def source_rows(source: DatasetSource, files: list[Path],
                opener: Callable[[Path], BinaryIO] | None = None) -> Iterator[tuple[str, Any]]:
    """Every row of a dataset entry, columns renamed as mapped: ``(location, row)``, or ``(location, RowFault)``
    for a line that is no row at all. ``opener``: opens each file for reading (binary) in place of ``open``, e.g.
    to hash the bytes as they are read (:class:`lora_ft.files.HashedFile`)."""
    if not files:
        yield from read_hub(source.path, source.split)
    if source.format == "auto" and len(files) > 1:
        check_one_format(source, files)
    for path in files:
        try:
            with (opener or _open_binary)(path) as fh:
                for location, raw in READERS[path.suffix.lower()](path, fh):
                    yield location, raw if isinstance(raw, RowFault) else _rename(raw, source.columns)
        except UnicodeDecodeError as exc:
            line, offset = first_non_utf8(path)
            raise UserError(f"{display(path)} is not UTF-8 text: byte 0x{exc.object[exc.start]:02x} at "
                            f"line {line} (byte {offset} of the file) is not valid UTF-8",
                            where=f"{display(path)}:{line}",
                            fix="save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8 IN > OUT)") from exc


def check_one_format(source: DatasetSource, files: list[Path]) -> None:
    """A folder read with ``format: auto`` is one format, told from its first file: refuse one whose files hold
    different formats (the rows of the others would all be dropped as malformed), naming each file's format."""
    found: dict[str, tuple[Path, str]] = {}
    for path in files:
        first = next(((where, row) for where, row in READERS[path.suffix.lower()](path) if isinstance(row, dict)),
                     None)
        fmt = detect_format(_rename(first[1], source.columns)) if first else None
        if fmt is not None:
            found.setdefault(fmt, (path, first[0]))
    if len(found) > 1:
        shown = "; ".join(f"{path.name} is {fmt}" for fmt, (path, _) in found.items())
        second = list(found.values())[1][1]
        raise UserError(f"the folder {source.path} mixes data formats: {shown}", where=second,
                        fix="give each format its own entry under data.train (- path: FILE; each entry's format is "
                        "detected on its own), or keep one format per folder (docs/data.md)", settings=("data.path",))


def detected_format(row: dict, source: DatasetSource, method: str, location: str) -> str:
    """The format of a dataset entry read from its first row's columns; refuses data of the wrong kind."""
    kinds = method_of(method).reads
    fmt = detect_format(row, kinds)
    check_format_kind(detect_format(row), method, source.path, location, fmt)
    if fmt is None:
        example = ("for example columns: {prompt: question, chosen: good, rejected: bad}" if "sft" not in kinds
                   else "for example columns: {instruction: question, output: answer}")
        raise UserError(
            f"cannot tell the data format of {source.path} from its columns {sorted(row)} (method "
            f"{method} reads {', '.join(format_names(kinds))})",
            where=location,
            fix=f"set format ({', '.join(format_names(kinds))}) and map columns, {example} (docs/data.md)",
            settings=("data.format",),
        )
    return fmt


def row_sample(row: Any, fmt: str, location: str, system_prompt: str | None) -> Sample:
    """One row as a Sample, the system prompt added to a conversation that has none; RowFault if unusable."""
    if isinstance(row, RowFault):
        raise row
    sample = normalize_row(row, fmt)
    _check_encodable(sample)
    sample.location = location
    if system_prompt and sample.messages is not None and sample.messages[0]["role"] != "system":
        sample.messages.insert(0, {"role": "system", "content": system_prompt})
    return sample


def read_dataset(source: DatasetSource, loaded: LoadedConfig, system_prompt: str | None) -> tuple[list[Sample],
                                                                                                    DatasetReport]:
    """Read one dataset entry: every usable row as a Sample, every other row counted in the report."""
    files = data_files(source, loaded)
    report = source_report(source, files)
    samples: list[Sample] = []
    method = loaded.config.method
    splits_pairs = method_of(method).splits_pairs
    fmt = None if source.format == "auto" else source.format
    if fmt is not None:
        check_format_kind(fmt, method, source.path, None)
    for location, row in source_rows(source, files):
        report.rows_read += 1
        if fmt is None and isinstance(row, dict):
            fmt = detected_format(row, source, method, location)
        try:
            if fmt is None:  # rows before the first object, whose columns tell the format
                raise row if isinstance(row, RowFault) else RowFault("row is not an object")
            sample = row_sample(row, fmt, location, system_prompt)
        except RowFault as fault:
            report.drop(str(fault), location)
            continue
        samples += unpaired(sample) if splits_pairs else [sample]
        if source.max_samples and len(samples) >= source.max_samples:
            del samples[source.max_samples:]  # exactly max_samples: a KTO pair may give only its first half
            break
    report.format = fmt or source.format
    report.kept = len(samples)
    return samples, report


def unpaired(sample: Sample) -> list[Sample]:
    """A sample as KTO trains on it: a pair becomes its chosen answer and its rejected one, each with the prompt."""
    if sample.chosen is None or sample.rejected is None:
        return [sample]
    return [Sample(sample.location, messages=sample.messages, chosen=sample.chosen, tools=sample.tools),
            Sample(sample.location, messages=list(sample.messages), rejected=sample.rejected, tools=sample.tools)]


def check_format_kind(fmt: str | None, method: str, path: str, location: str | None,
                      detected_for_method: str | None = None) -> None:
    """Refuse data of the wrong kind for the method: pairs under SFT would train on the rejected answers too, and
    SFT examples have nothing to prefer."""
    if fmt is None or fmt == detected_for_method:
        return
    kind = registry()[fmt].kind
    if kind in method_of(method).reads:
        return
    wanted = ", ".join(format_names(method_of(method).reads))
    what = {"sft": "SFT examples", "pairs": "preference pairs", "unpaired": "labelled answers (KTO)",
            "prompts": "prompts for RL (GRPO)"}[kind]
    readers = [name for name, other in methods().items() if kind in other.reads]
    raise UserError(f"{path} holds {what} (format {fmt}), but this run's method is {method}, which reads "
                    f"{wanted}", where=location or path,
                    fix=f"set method: {' or '.join(readers)} for this data, or point the method at data of its kind "
                    "(docs/data.md)", settings=("method",))


@dataclass
class LoadedData:
    train: list[Sample]
    eval: list[Sample]
    reports: list[DatasetReport]
    eval_source: str  # "files" or "held out N% of train (seed S)" or "none"


def check_drops(reports: list[DatasetReport], max_fraction: float) -> None:
    """Stop when a dataset is empty or has lost too many rows; say which rows and why."""
    problems = []
    for report in reports:
        if report.rows_read and report.kept == 0:
            problems.append(Problem(f"no usable rows in {report.path} ({report.rows_read} read)"))
        elif report.rows_read and report.dropped_count / report.rows_read > max_fraction:
            problems.append(Problem(
                f"{report.path}: {report.dropped_count} of {report.rows_read} rows are unusable "
                f"(more than data.max_dropped_fraction = {max_fraction})"))
        elif report.rows_read == 0:
            problems.append(Problem(f"{report.path} holds no rows"))
    if problems:
        for report in reports:
            for reason, locations in report.dropped.items():
                shown = ", ".join(locations[:3]) + (" ..." if len(locations) > 3 else "")
                problems.append(Problem(f"{len(locations)} x {reason}", shown))
        raise UserError("the data is not usable", problems,
                        fix="fix the rows named above (file:line), or raise data.max_dropped_fraction to train on "
                        "what remains", settings=("data.max_dropped_fraction",))


def load_data(loaded: LoadedConfig) -> LoadedData:
    """Read every train and eval dataset, mix them, and hold out an eval split if asked."""
    cfg = loaded.config.data
    reports: list[DatasetReport] = []
    train: list[Sample] = []
    evaluation: list[Sample] = []
    for source in cfg.train:
        samples, report = read_dataset(source, loaded, cfg.system_prompt)
        train += samples
        reports.append(report)
    for source in cfg.eval:
        samples, report = read_dataset(source, loaded, cfg.system_prompt)
        evaluation += samples
        reports.append(report)
    check_drops(reports, cfg.max_dropped_fraction)
    if cfg.eval:
        eval_source = f"{len(evaluation)} rows from data.eval"
    elif cfg.eval_fraction > 0 and len(train) >= 2:
        held, eval_source = held_out(len(train), cfg.eval_fraction, loaded.config.train.seed)
        kept = set(held)
        evaluation = [s for i, s in enumerate(train) if i in kept]
        train = [s for i, s in enumerate(train) if i not in kept]
    else:
        eval_source = "none"
    return LoadedData(train=train, eval=evaluation, reports=reports, eval_source=eval_source)


def held_out(count: int, fraction: float, seed: int) -> tuple[list[int], str]:
    """The rows (in order) held out of ``count`` training rows as the eval split, and the split in words: a seeded
    shuffle's first ``fraction``, at least one row and never all of them."""
    order = list(range(count))
    random.Random(seed).shuffle(order)
    n_eval = min(count - 1, max(1, round(fraction * count)))
    return sorted(order[:n_eval]), f"{n_eval} rows held out of the training data ({fraction:.0%}, seed {seed})"
