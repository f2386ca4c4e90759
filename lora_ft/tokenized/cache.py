"""Tokenized data, kept on disk and reused: the first command that reads a run's data tokenizes it, every later one
(``train``, ``data``, ``plan``, ``eval``, a resume) opens the same Arrow files memory-mapped, in about a second.

An entry is found by a key (:mod:`lora_ft.tokenized.keys`): a hash of everything that changes the tokens -- the data
files' contents (read and hashed on every command), each dataset's format, column mapping, split and
``max_samples``, the system prompt, ``train_on``, ``max_seq_length``, the tokenizer (its whole serialized form) and
the chat template, the training method, and the cache's format. Change any of them and the key changes, so a stale
entry is never read. What only selects among the tokenized rows (``overlength``, ``eval_fraction`` and the seed) is
applied when the entry is opened, without tokenizing again. Preference pairs (``dpo``, ``orpo``, ``kto``) are kept
with their whole prompts and answers (:mod:`lora_ft.tokenized.pairs`), so their length limits are applied when they
are read and are not in the key.

An entry is written in a temporary folder and renamed into place once complete, so a run killed while writing it
leaves no entry that could be read, and two runs writing the same entry at once both end with a whole one. The
bytes tokenized are hashed as they are read and must be the bytes the key was made from, so a file changed while
it is read leaves no entry. The entry's meta file, written last, holds checksums of its files and its row counts
(:mod:`lora_ft.tokenized.integrity`), checked whenever it is opened: a damaged entry is said, removed and tokenized
again. An entry that is whole is read without writing anything, so a read-only cache serves it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path

from lora_ft import console
from lora_ft.config import LoadedConfig, RunConfig
from lora_ft.data.loading import DatasetReport, held_out, source_report
from lora_ft.samples import Sample
from lora_ft.errors import UserError
from lora_ft.data.tokenization import ChatRenderer
from lora_ft.tokenized import folders, integrity
from lora_ft.tokenized.encoding import Settings
from lora_ft.tokenized.folders import META_FILE
from lora_ft.tokenized.keys import cache_root, file_hashes, key_of, key_parts, listing, shown_files, sources
from lora_ft.tokenized.pairs import PairsSplit
from lora_ft.tokenized.split import StoredSplit, TokenizedSplit, relocations, update_digest
from lora_ft.tokenized.writing import SplitWriter, write_samples, write_sources


@dataclass
class StoredData:
    """A run's train and eval splits on disk, memory-mapped, what reading the files found, and where the tokens came
    from. :class:`TokenizedData` (SFT) and :class:`PreferenceData` say which kind of split they hold."""

    train: StoredSplit
    eval: StoredSplit | None
    reports: list[DatasetReport]
    eval_source: str
    path: Path  # the entry's folder
    key: str | None = None  # None: not cached (--no-cache, or samples a command brought)
    reused: bool = False
    tokenize_seconds: float = 0.0
    not_cached: str = "--no-cache"  # why, when key is None

    def describe(self) -> str:
        """Where the tokens came from, in words: the cache, or tokenized by this command (cached or not)."""
        if self.reused:
            return f"reused from the cache ({self.path}); tokenized in {self.tokenize_seconds:.1f} s the first time"
        return f"tokenized in {self.tokenize_seconds:.1f} s; " + (
            f"cached in {self.path} (the next command reuses it)" if self.key else f"not cached ({self.not_cached})")

    def record(self) -> dict:
        """Where the tokenized data is kept, for the run's manifest."""
        return {"cache_key": self.key, "path": str(self.path) if self.key else None, "reused": self.reused,
                "tokenize_seconds": self.tokenize_seconds}


class TokenizedData(StoredData):
    """SFT data: the splits are :class:`TokenizedSplit`, each sample's tokens and labels cut at max_seq_length."""

    train: TokenizedSplit
    eval: TokenizedSplit | None

    def tokens_sha256(self) -> str:
        """The hash of exactly what trains, as :func:`lora_ft.rundir.resume.data_fingerprint` defines it; kept in
        the entry (with its own checksum, and only where the entry's folder is writable), so a cached run does not
        read every token again."""
        selection = f"{self.train.overlength}:{len(self.train)}:{self.eval_source}"
        stored = self.path / "fingerprints.json"
        known = (integrity.unsealed(stored.read_text()) or {}) if self.key and stored.is_file() else {}
        if selection not in known:
            digest = hashlib.sha256()
            for split in (self.train, self.eval):
                for column in ("input_ids", "labels"):
                    update_digest(digest, split, column)
            known[selection] = digest.hexdigest()
            if self.key:
                from lora_ft.files import write_text_atomic

                try:
                    write_text_atomic(stored, integrity.sealed_text(known))
                except OSError:
                    pass  # a read-only cache: computed again next time
        return known[selection]


class PreferenceData(StoredData):
    """Preference pairs: the splits are :class:`PairsSplit`, each pair's tokens before the length limits."""

    train: PairsSplit
    eval: PairsSplit | None


class _Damaged(Exception):
    """An entry's files are not what its meta file says was written."""


@dataclass
class _Inputs:
    """What this command reads: the config, each dataset entry's files (listed once), their hashes (read now) and
    the key they make."""

    loaded: LoadedConfig
    cfg: RunConfig
    renderer: ChatRenderer
    listed: list[list[Path]]
    hashes: dict[Path, str]
    parts: dict
    key: str

    def reports(self) -> list[DatasetReport]:
        """Empty reports of every dataset entry as this config names it, with its files' hashes."""
        return [source_report(s, files, self.hashes) for s, files in zip(sources(self.cfg), self.listed)]


def _selection(count: int, has_eval_file: bool, meta: dict, cfg: RunConfig) -> tuple:
    """``(train rows or None for all, held-out eval rows or None, the eval data in words)`` of ``count`` rows."""
    if has_eval_file or not (cfg.data.eval_fraction > 0 and count >= 2 and not meta.get("given")):
        return None, None, meta.get("eval_source", "none")
    import numpy as np

    held, eval_source = held_out(count, cfg.data.eval_fraction, cfg.train.seed)
    mask = np.ones(count, dtype=bool)
    mask[held] = False
    return np.nonzero(mask)[0], np.asarray(held), eval_source


def _open(path: Path, meta: dict, cfg: RunConfig, key: str | None,
          inputs: _Inputs | None = None) -> TokenizedData | PreferenceData:
    """The entry in ``path`` as this command reads it: its rows selected by ``cfg``, and (``inputs``) its reports
    and row locations naming the files as this command names them."""
    from datasets import Dataset

    train_table = Dataset.from_file(str(path / "train.arrow"))
    eval_table = Dataset.from_file(str(path / "eval.arrow")) if (path / "eval.arrow").is_file() else None
    if "rows" in meta:
        problem = integrity.rows_damage(meta, {"train": len(train_table),
                                               **({"eval": len(eval_table)} if eval_table is not None else {})})
        if problem:
            raise _Damaged(problem)
    train_rows, held, eval_source = _selection(len(train_table), eval_table is not None, meta, cfg)
    if eval_table is not None:
        eval_source = f"{len(eval_table)} rows from data.eval"
    moves = relocations(meta.get("shown", []), shown_files(inputs.listed)) if inputs else {}
    reports = [DatasetReport(**r) for r in meta["reports"]]
    for report, now in zip(reports, inputs.reports() if inputs else []):
        report.path, report.sha256 = now.path, now.sha256  # the same contents, as this config names them
        report.dropped = {reason: [StoredSplit.relocated(at, moves) for at in where]
                          for reason, where in report.dropped.items()}
    if meta.get("preference"):
        evaluation = PairsSplit(eval_table, moves=moves) if eval_table is not None else \
            PairsSplit(train_table, held, moves=moves) if held is not None else None
        return PreferenceData(PairsSplit(train_table, train_rows, moves=moves), evaluation, reports, eval_source,
                              path, key, tokenize_seconds=meta.get("seconds", 0.0))
    limit, policy = cfg.data.max_seq_length, cfg.data.overlength
    evaluation = TokenizedSplit(eval_table, None, limit, policy, moves) if eval_table is not None else \
        TokenizedSplit(train_table, held, limit, policy, moves) if held is not None else None
    return TokenizedData(TokenizedSplit(train_table, train_rows, limit, policy, moves), evaluation, reports,
                         eval_source, path, key, tokenize_seconds=meta.get("seconds", 0.0))


def _write(folder: Path, inputs: _Inputs, meta: dict, workers: int | None) -> None:
    """Tokenize the data into ``folder``, checking that the bytes read are the bytes the key was made from, then
    write the meta file, last, with the checksums of what was written."""
    cfg = inputs.cfg
    settings = Settings(inputs.renderer, cfg.data.train_on, cfg.data.max_seq_length, cfg.data.system_prompt,
                        cfg.method)
    started = time.monotonic()
    reports, rows = [], {}
    trains = len(cfg.data.train)
    for name, split_sources, listed in (("train", cfg.data.train, inputs.listed[:trains]),
                                        ("eval", cfg.data.eval, inputs.listed[trains:])):
        if not split_sources:
            continue
        writer = SplitWriter(folder / f"{name}.arrow", settings.schema())
        try:
            reports += write_sources(split_sources, inputs.loaded, settings, writer, workers, inputs.hashes, listed)
        finally:
            writer.close()
        rows[name] = writer.rows
    meta.update(reports=[asdict(r) for r in reports], preference=settings.preference,
                seconds=round(time.monotonic() - started, 2),
                written_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    integrity.seal(folder, meta, rows)
    (folder / META_FILE).write_text(json.dumps(meta, indent=1))


def tokenized_data(loaded: LoadedConfig, cfg: RunConfig, renderer: ChatRenderer, *, cache: bool = True,
                   workers: int | None = None) -> TokenizedData:
    """The run's data tokenized: from the cache when a whole entry has the same key, else read, tokenized on every
    core and (with ``cache``) kept for the next command. Says which it was."""
    listed = listing(loaded, cfg)
    hashes = file_hashes(loaded, cfg, listed)
    parts = key_parts(loaded, cfg, renderer, hashes, listed)
    inputs = _Inputs(loaded, cfg, renderer, listed, hashes, parts, key_of(parts))
    if not cache:
        return _tokenize(inputs, None, workers)
    root = cache_root(loaded, cfg)
    entry = root / inputs.key
    data, problem, _ = _find(entry, inputs)
    if data is not None:  # whole: read without the lock, without writing anything
        return _reused(data)
    with ExitStack() as held:
        try:
            held.enter_context(folders.writing_lock(root, inputs.key))
        except UserError as exc:  # a read-only cache serves a whole entry, but cannot take a new one
            if problem:
                exc.title = f"the cached tokenized data in {entry} is damaged ({problem}), and {exc.title}"
            raise
        data, problem, ours = _find(entry, inputs)  # written meanwhile by the process waited for, or damaged
        if data is not None:
            return _reused(data)
        if problem and not ours:
            console.notice(f"warning: {entry} is not a tokenized-data entry lora-ft can check ({problem}); it is "
                           "left as it is, and the data is tokenized into a temporary folder (remove that folder "
                           "to cache again)")
            return _tokenize(inputs, None, workers, f"{entry} is not an entry")
        if problem:
            folders.set_aside(entry)
            console.notice(f"warning: the cached tokenized data in {entry} cannot be read: {problem}; the entry is "
                           "damaged: removed, tokenizing again")
        return _tokenize(inputs, root, workers)


def _find(entry: Path, inputs: _Inputs) -> tuple[StoredData | None, str | None, bool]:
    """``(the entry opened, None, True)`` when it is whole; ``(None, what is wrong, whether it is provably the
    cache's own)`` when it is not; ``(None, None, True)`` when there is none."""
    meta_file = entry / META_FILE
    if not entry.exists():
        return None, None, True
    try:
        meta = json.loads(meta_file.read_text())
    except (OSError, ValueError) as exc:
        return None, f"{META_FILE} cannot be read: {getattr(exc, 'strerror', None) or exc}", False
    if not isinstance(meta, dict) or meta.get("key") != entry.name:
        return None, f"{META_FILE} does not name the key {entry.name}", False
    problem = integrity.damage(entry, meta)
    if problem is None:
        try:
            return _open(entry, meta, inputs.cfg, inputs.key, inputs), None, True
        except _Damaged as exc:
            problem = str(exc)
        except Exception as exc:  # noqa: BLE001 - checksums agree but Arrow refuses the file: damaged all the same
            problem = f"its files cannot be opened ({exc})"
    return None, problem, True


def _reused(data: StoredData) -> StoredData:
    folders.mark_used(data.path)
    data.reused = True
    console.say(f"tokenized data: {data.describe()}")
    return data


def _tokenize(inputs: _Inputs, root: Path | None, workers: int | None, not_cached: str = "--no-cache") -> StoredData:
    """Tokenize into a new entry under ``root`` (its writing lock held), or, without one, into a temporary folder
    removed when the process ends (``not_cached``: why, in words)."""
    folder = folders.temporary_folder(root)
    meta = {"key": inputs.key, "parts": inputs.parts, "shown": shown_files(inputs.listed)}
    try:
        _write(folder, inputs, meta, workers)
    except OSError as exc:
        shutil.rmtree(folder, ignore_errors=True)
        raise UserError(f"cannot write the tokenized data in {folder.parent}: {exc.strerror or exc}",
                        fix="free some disk space there, set data.cache_dir to a folder with room, or pass "
                        "--no-cache", settings=("data.cache_dir",)) from exc
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    key, entry = (inputs.key, root / inputs.key) if root is not None else (None, folder)
    if root is not None:
        try:
            folder.rename(entry)
        except OSError:  # a writer without the lock (no fcntl) published the same entry first: theirs is as good
            shutil.rmtree(folder, ignore_errors=True)
        folders.clean(root, keep=entry)
    data = _open(entry, meta, inputs.cfg, key, inputs)
    data.not_cached = not_cached
    console.say(f"tokenized data: {data.describe()}")
    return data


def tokenized_samples(train: list[Sample], evaluation: list[Sample], reports: list[DatasetReport],
                      eval_source: str, cfg: RunConfig, renderer: ChatRenderer) -> TokenizedData:
    """Samples a command brings itself (an evaluation's set), tokenized into a temporary folder."""
    settings = Settings(renderer, cfg.data.train_on, cfg.data.max_seq_length, None)
    folder = folders.temporary_folder(None)
    for name, samples in (("train", train), ("eval", evaluation)):
        if name == "train" or samples:
            writer = SplitWriter(folder / f"{name}.arrow")
            try:
                write_samples(samples, settings, writer)
            finally:
                writer.close()
    meta = {"reports": [asdict(r) for r in reports], "eval_source": eval_source, "given": True}
    return _open(folder, meta, cfg, None)
