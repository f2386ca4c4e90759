"""One tokenized SFT split (train or eval) read from its Arrow file, memory-mapped: the rows that train, the figures
the run and the data report print, and its samples decoded on demand (:class:`StoredSplit`, which preference splits
share).

A split is a table of every sample read (:func:`lora_ft.tokenized.encoding.schema`) and the row numbers that
belong to it (all of them, or those a held-out eval split leaves to train). Which samples train follows from their
length and trained tokens and the run's ``max_seq_length`` and ``overlength``, so nothing is copied into memory:
the figures are computed from the fixed-width columns with numpy, 4 bytes a sample each.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import cached_property

import numpy as np

from lora_ft.data.length_policy import LengthPolicy
from lora_ft.samples import Sample
from lora_ft.tokenized.encoding import sample_from_json

MAX_LOCATIONS = 20  # over-length and untrained locations kept for messages and reports


class StoredSplit:
    """The samples of one split, as a view on the table they were written to (all its rows, or those given): their
    locations, content keys and samples, read on demand. The base of SFT and preference splits."""

    def __init__(self, table, rows: np.ndarray | None = None, moves: dict[str, str] | None = None):
        self.table = table  # a datasets.Dataset, memory-mapped from its Arrow file
        self.rows = np.arange(len(table), dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
        self.moves = moves or {}  # a file as its writer showed it -> as this command shows it (:func:`relocations`)
        self._columns: dict[str, np.ndarray] = {}
        self._duplicates: dict = {}

    def __len__(self) -> int:
        return len(self.rows)

    def column(self, name: str) -> np.ndarray:
        """A fixed-width column for this split's samples, in their order."""
        if name not in self._columns:
            self._columns[name] = self.table.data.column(name).to_numpy()[self.rows]
        return self._columns[name]

    def duplicates(self, name: str):
        """Exact duplicates among this split's samples (computed once: the run summary and the report share it)."""
        from lora_ft.data.statistics import duplicates_of

        if name not in self._duplicates:
            self._duplicates[name] = duplicates_of(self.keys(), self.location, name)
        return self._duplicates[name]

    def keys(self) -> np.ndarray:
        """The samples' content digests (16 bytes each), read once."""
        if "content_key" not in self._columns:
            whole = self.table.data.column("content_key").to_numpy(zero_copy_only=False)
            self._columns["content_key"] = np.asarray(whole, dtype="S16")[self.rows]
        return self._columns["content_key"]

    def locations(self, positions) -> list[str]:
        """The file:line of samples at these positions of the split."""
        rows = [int(self.rows[p]) for p in positions]
        column = self.table.data.column("location")
        return [self.relocated(column[r].as_py(), self.moves) for r in rows]

    @staticmethod
    def relocated(location: str, moves: dict[str, str]) -> str:
        """A row's location (``file:line``, ``file item N``, ``file row N``) naming its file as this command does."""
        for old in sorted(moves, key=len, reverse=True):
            if location.startswith(old) and location[len(old):len(old) + 1] in (":", " "):
                return moves[old] + location[len(old):]
        return location

    def location(self, position: int) -> str:
        return self.locations([position])[0]

    def head(self, count: int) -> list[Sample]:
        return [self._sample(p) for p in range(min(count, len(self)))]

    def __iter__(self) -> Iterator[Sample]:
        for position in range(len(self)):
            yield self._sample(position)

    def _sample(self, position: int) -> Sample:
        return sample_from_json(self.location(position),
                                self.table.data.column("sample")[int(self.rows[position])].as_py())


class TokenizedSplit(StoredSplit):
    """The samples of one SFT split, their tokens and what training takes of them."""

    def __init__(self, table, rows: np.ndarray | None, max_length: int, overlength: str,
                 moves: dict[str, str] | None = None):
        super().__init__(table, rows, moves)
        self.max_length, self.overlength = max_length, overlength
        self.policy = LengthPolicy(max_length, overlength)

    # what training takes

    @cached_property
    def over_length_mask(self) -> np.ndarray:
        return self.policy.over_mask(self.column("length"))

    @cached_property
    def kept_mask(self) -> np.ndarray:
        """Samples that train: over the length limit only when the policy keeps them cut, and a trained token left
        (``error`` counts as ``truncate`` here: :meth:`over_length_locations` is what stops such a run)."""
        return (self.column("trained_kept") > 0) & self.policy.kept_mask(self.column("length"))

    @cached_property
    def kept_rows(self) -> np.ndarray:
        return self.rows[self.kept_mask]

    def dataset(self):
        """The samples that train, as the trainer takes them: ``input_ids`` and ``labels``, memory-mapped."""
        return self.table.select(self.kept_rows).select_columns(["input_ids", "labels"])

    @property
    def kept(self) -> int:
        return int(self.kept_mask.sum())

    @property
    def tokens(self) -> int:
        return int(self.policy.fitted_lengths(self.column("length"))[self.kept_mask].sum())

    @property
    def trained_tokens(self) -> int:
        return int(self.column("trained_kept")[self.kept_mask].sum())

    @property
    def truncated(self) -> int:
        return int((self.over_length_mask & ~self._dropped_long).sum())

    @property
    def trained_tokens_past_limit(self) -> int:
        """Trained tokens after ``max_seq_length``: what cutting the long samples loses."""
        return int((self.column("trained") - self.column("trained_kept")).sum())

    @property
    def truncated_trained_tokens(self) -> int:
        return self.trained_tokens_past_limit if self.policy.cuts else 0

    @property
    def over_length(self) -> int:
        return int(self.over_length_mask.sum())

    @property
    def trained_tokens_in_over_length(self) -> int:
        return int(self.column("trained")[self.over_length_mask].sum())

    @property
    def no_trained_token(self) -> int:
        """Samples left out for having no trained token (the over-length ones a ``drop`` leaves out aside)."""
        return int((~self.kept_mask & ~self._dropped_long).sum())

    @property
    def _dropped_long(self) -> np.ndarray:
        return ~self.policy.kept_mask(self.column("length"))

    def over_length_locations(self, limit: int = MAX_LOCATIONS) -> list[str]:
        return self.locations(np.nonzero(self.over_length_mask)[0][:limit])

    def no_trained_token_locations(self, limit: int = MAX_LOCATIONS) -> list[str]:
        return self.locations(np.nonzero(~self.kept_mask & ~self._dropped_long)[0][:limit])

    def longest(self) -> int:
        return int(self.column("length").max()) if len(self) else 0

    # per-sample figures, for the statistics

    def lengths(self, kept_only: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(total tokens, trained tokens) per sample: before the cut, or as trained (``kept_only``)."""
        if kept_only:
            return (self.policy.fitted_lengths(self.column("length"))[self.kept_mask],
                    self.column("trained_kept")[self.kept_mask])
        return self.column("length"), self.column("trained")

    def kept_tokens(self, limit: int | None = None) -> tuple[list[list[int]], list[list[int]]]:
        """(input_ids, labels) of the samples that train, in order (the first ``limit``), as lists."""
        rows = self.kept_rows if limit is None else self.kept_rows[:limit]
        chosen = self.table.select(rows).select_columns(["input_ids", "labels"]).with_format("arrow")[:]
        return chosen.column("input_ids").to_pylist(), chosen.column("labels").to_pylist()


def relocations(written: list[list[str]], now: list[list[str]]) -> dict[str, str]:
    """How each data file was shown when an entry was written (relative to its writer's folder, its path as that
    config named it) -> how this command shows it, for the files shown differently: the rows' locations, kept in
    the entry as written, name the files this command reads (an entry is shared by every path to the same
    contents)."""
    return {old: new for before, after in zip(written, now) for old, new in zip(before, after) if old != new}


DIGEST_BATCH = 8192  # rows hashed per step


def update_digest(digest, split: TokenizedSplit | None, column: str) -> None:
    """Hash one column of the rows that train as :func:`lora_ft.rundir.resume.data_fingerprint` hashes lists: the
    row count (8 bytes), then each row's length (4 bytes) and its values as int64, little-endian."""
    if split is None:
        digest.update((0).to_bytes(8, "little"))
        return
    rows = split.kept_rows
    digest.update(len(rows).to_bytes(8, "little"))
    for start in range(0, len(rows), DIGEST_BATCH):
        chosen = split.table.select(rows[start:start + DIGEST_BATCH]).select_columns([column])
        lists = chosen.with_format("arrow")[:].column(column).combine_chunks()
        digest.update(_row_bytes(lists.offsets.to_numpy(), lists.values.to_numpy()))


def _row_bytes(offsets: np.ndarray, values: np.ndarray) -> bytes:
    """Rows of a list column as ``length (uint32) + values (int64)`` each, all little-endian, in one buffer."""
    lengths = np.diff(offsets).astype("<u4")
    values = values[offsets[0]:offsets[-1]].astype("<i8")
    row_bytes = 4 + 8 * lengths.astype(np.int64)
    starts = np.concatenate([[0], np.cumsum(row_bytes)[:-1]]).astype(np.int64)
    buffer = np.empty(int(row_bytes.sum()), dtype=np.uint8)
    buffer[(starts[:, None] + np.arange(4)).ravel()] = lengths.view(np.uint8)
    row_of = np.repeat(np.arange(len(lengths)), lengths)
    index_in_row = np.arange(len(values)) - (offsets[:-1] - offsets[0])[row_of]
    at = starts[row_of] + 4 + 8 * index_in_row
    buffer[(at[:, None] + np.arange(8)).ravel()] = values.view(np.uint8)
    return buffer.tobytes()
