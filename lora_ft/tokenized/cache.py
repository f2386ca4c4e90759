"""Tokenized data, kept on disk and reused: the first command that reads a run's data tokenizes it, every later one
(``train``, ``data``, ``plan``, ``eval``, a resume) opens the same Arrow files memory-mapped, in about a second.

An entry is found by a key: a hash of everything that changes the tokens -- the data files' contents, each
dataset's format, column mapping, split and ``max_samples``, the system prompt, ``train_on``, ``max_seq_length``,
the tokenizer (its whole serialized form) and the chat template, the training method, and this module's format.
Change any of them and the key changes, so a stale entry is never read. What only selects among the tokenized
rows (``overlength``, ``eval_fraction`` and the seed) is applied when the entry is opened, without tokenizing again.
Preference pairs (``dpo``, ``orpo``, ``kto``) are kept with their whole prompts and answers
(:mod:`lora_ft.tokenized.pairs`), so their length limits are applied when they are read and are not in the key.

An entry is written in a temporary folder and renamed into place once complete, so a run killed while writing it
leaves no entry that could be read, and two runs writing the same entry at once both end with a whole one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from lora_ft import console
from lora_ft.config import LoadedConfig, RunConfig
from lora_ft.data.loading import DatasetReport, data_files, held_out
from lora_ft.data.samples import Sample
from lora_ft.errors import UserError
from lora_ft.files import file_sha256
from lora_ft.tokenization import ChatRenderer
from lora_ft.tokenized.encoding import Settings
from lora_ft.tokenized.pairs import PairsSplit
from lora_ft.tokenized.split import StoredSplit, TokenizedSplit, update_digest
from lora_ft.tokenized.writing import SplitWriter, write_samples, write_sources

CACHE_FORMAT = 1  # bump when the tokens or the columns written for the same inputs change
META_FILE = "meta.json"
UNUSED_DAYS = 30  # entries not opened for this long are removed when a new one is written
STALE_TEMP_HOURS = 24  # temporary folders of writers that died


def cache_root(loaded: LoadedConfig, cfg: RunConfig) -> Path:
    """``data.cache_dir`` (relative to the config file), else ``$LORA_FT_DATA_CACHE``, else ``tokenized/`` in
    lora-ft's cache folder."""
    if cfg.data.cache_dir:
        return loaded.resolve_path(cfg.data.cache_dir)
    if os.environ.get("LORA_FT_DATA_CACHE"):
        return Path(os.environ["LORA_FT_DATA_CACHE"]).expanduser()
    from lora_ft.embedded import cache_root as lora_ft_cache

    return lora_ft_cache() / "tokenized"


def key_parts(loaded: LoadedConfig, cfg: RunConfig, renderer: ChatRenderer) -> dict:
    """Everything that changes the tokenized rows, as plain data. The files' hashes are kept in the cache folder
    (:func:`lora_ft.files.file_sha256`'s memo), so a cached run does not read a large file again."""
    memo = cache_root(loaded, cfg) / "file-hashes.json"

    def source(entry) -> dict:
        files = data_files(entry, loaded)
        return {"path": entry.path if not files else str(loaded.resolve_path(entry.path)),
                "files": [[str(f), f.stat().st_size, file_sha256(f, memo if memo.parent.is_dir() else None)]
                          for f in files],
                "format": entry.format, "columns": dict(entry.columns), "split": entry.split,
                "max_samples": entry.max_samples}

    tokenizer = renderer.tokenizer
    return {
        "cache_format": CACHE_FORMAT,
        "method": cfg.method,
        "train": [source(s) for s in cfg.data.train],
        "eval": [source(s) for s in cfg.data.eval],
        "system_prompt": cfg.data.system_prompt,
        # preference tokens are kept whole and always train on the answers: the limits apply when they are read
        "train_on": cfg.data.train_on if cfg.method == "sft" else None,
        "max_seq_length": cfg.data.max_seq_length if cfg.method == "sft" else None,
        "tokenizer": hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode()).hexdigest(),
        "tokenizer_class": type(tokenizer).__name__,
        "special_tokens": {k: str(v) for k, v in sorted(tokenizer.special_tokens_map.items())},
        "chat_template": hashlib.sha256(renderer.template.encode()).hexdigest(),
    }


KEY_LENGTH = 24  # hex characters of an entry's key


def key_of(parts: dict) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:KEY_LENGTH]


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

    def describe(self) -> str:
        """Where the tokens came from, in words: the cache, or tokenized by this command (cached or not)."""
        if self.reused:
            return f"reused from the cache ({self.path}); tokenized in {self.tokenize_seconds:.1f} s the first time"
        return f"tokenized in {self.tokenize_seconds:.1f} s; " + (
            f"cached in {self.path} (the next command reuses it)" if self.key else "not cached (--no-cache)")

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
        the entry, so a cached run does not read every token again."""
        selection = f"{self.train.overlength}:{len(self.train)}:{self.eval_source}"
        stored = self.path / "fingerprints.json"
        known = json.loads(stored.read_text()) if self.key and stored.is_file() else {}
        if selection not in known:
            digest = hashlib.sha256()
            for split in (self.train, self.eval):
                for column in ("input_ids", "labels"):
                    update_digest(digest, split, column)
            known[selection] = digest.hexdigest()
            if self.key:
                from lora_ft.files import write_text_atomic

                write_text_atomic(stored, json.dumps(known, indent=1))
        return known[selection]


class PreferenceData(StoredData):
    """Preference pairs: the splits are :class:`PairsSplit`, each pair's tokens before the length limits."""

    train: PairsSplit
    eval: PairsSplit | None


def _selection(count: int, has_eval_file: bool, meta: dict, cfg: RunConfig) -> tuple:
    """``(train rows or None for all, held-out eval rows or None, the eval data in words)`` of ``count`` rows."""
    if has_eval_file or not (cfg.data.eval_fraction > 0 and count >= 2 and not meta.get("given")):
        return None, None, meta.get("eval_source", "none")
    import numpy as np

    held, eval_source = held_out(count, cfg.data.eval_fraction, cfg.train.seed)
    mask = np.ones(count, dtype=bool)
    mask[held] = False
    return np.nonzero(mask)[0], np.asarray(held), eval_source


def _open(path: Path, meta: dict, cfg: RunConfig, key: str | None) -> TokenizedData | PreferenceData:
    from datasets import Dataset

    train_table = Dataset.from_file(str(path / "train.arrow"))
    eval_table = Dataset.from_file(str(path / "eval.arrow")) if (path / "eval.arrow").is_file() else None
    train_rows, held, eval_source = _selection(len(train_table), eval_table is not None, meta, cfg)
    if eval_table is not None:
        eval_source = f"{len(eval_table)} rows from data.eval"
    reports = [DatasetReport(**r) for r in meta["reports"]]
    if meta.get("preference"):
        evaluation = PairsSplit(eval_table) if eval_table is not None else \
            PairsSplit(train_table, held) if held is not None else None
        return PreferenceData(PairsSplit(train_table, train_rows), evaluation, reports, eval_source, path, key,
                              tokenize_seconds=meta.get("seconds", 0.0))
    limit, policy = cfg.data.max_seq_length, cfg.data.overlength
    evaluation = TokenizedSplit(eval_table, None, limit, policy) if eval_table is not None else \
        TokenizedSplit(train_table, held, limit, policy) if held is not None else None
    return TokenizedData(TokenizedSplit(train_table, train_rows, limit, policy), evaluation, reports, eval_source,
                         path, key, tokenize_seconds=meta.get("seconds", 0.0))


def _write(folder: Path, loaded: LoadedConfig, cfg: RunConfig, renderer: ChatRenderer, meta: dict,
           workers: int | None) -> None:
    settings = Settings(renderer, cfg.data.train_on, cfg.data.max_seq_length, cfg.data.system_prompt, cfg.method)
    started = time.monotonic()
    reports = []
    for name, sources in (("train", cfg.data.train), ("eval", cfg.data.eval)):
        if not sources:
            continue
        writer = SplitWriter(folder / f"{name}.arrow", settings.schema())
        try:
            reports += write_sources(sources, loaded, settings, writer, workers)
        finally:
            writer.close()
    meta.update(reports=[asdict(r) for r in reports], preference=settings.preference,
                seconds=round(time.monotonic() - started, 2),
                written_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    (folder / META_FILE).write_text(json.dumps(meta, indent=1))


def tokenized_data(loaded: LoadedConfig, cfg: RunConfig, renderer: ChatRenderer, *, cache: bool = True,
                   workers: int | None = None) -> TokenizedData:
    """The run's data tokenized: from the cache when an entry has the same key, else read, tokenized on every
    core and (with ``cache``) kept for the next command. Says which it was."""
    parts = key_parts(loaded, cfg, renderer)
    key = key_of(parts)
    root = cache_root(loaded, cfg)
    if not cache:
        return _tokenized(loaded, cfg, renderer, parts, key, None, workers)
    with _writing_lock(root, key):
        return _tokenized(loaded, cfg, renderer, parts, key, root, workers)


@contextmanager
def _writing_lock(root: Path, key: str):
    """One process at a time tokenizes the same data (the ranks of a distributed run, two commands at once):
    the others wait, then read the entry it wrote."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        handle = (root / f".{key}.lock").open("a")
    except OSError as exc:
        raise _unwritable(root, exc) from exc
    try:
        import fcntl
    except ImportError:  # not a POSIX system: writers rely on the atomic rename alone
        fcntl = None
    with handle:
        if fcntl is not None:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                console.say("tokenized data: another process is tokenizing the same data; waiting for it")
                fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _tokenized(loaded: LoadedConfig, cfg: RunConfig, renderer: ChatRenderer, parts: dict, key: str,
               root: Path | None, workers: int | None) -> TokenizedData:
    cache = root is not None
    entry = root / key if cache else None
    if cache and (entry / META_FILE).is_file():
        try:
            meta = json.loads((entry / META_FILE).read_text())
            (entry / META_FILE).touch()  # used: kept by the clean-up
            data = _open(entry, meta, cfg, key)
        except Exception as exc:  # noqa: BLE001 - a damaged entry (disk fault, a hand edit): tokenize again
            console.say(f"warning: the cached tokenized data in {entry} cannot be read ({exc}); tokenizing again")
            shutil.rmtree(entry, ignore_errors=True)
        else:
            data.reused = True
            console.say(f"tokenized data: {data.describe()}")
            return data
    folder = _temporary_folder(root if cache else None)
    meta = {"key": key, "parts": parts}
    try:
        _write(folder, loaded, cfg, renderer, meta, workers)
    except OSError as exc:
        shutil.rmtree(folder, ignore_errors=True)
        raise UserError(f"cannot write the tokenized data in {folder.parent}: {exc.strerror or exc}",
                        fix="free some disk space there, set data.cache_dir to a folder with room, or pass "
                        "--no-cache") from exc
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    if not cache:
        data = _open(folder, meta, cfg, None)
        console.say(f"tokenized data: {data.describe()}")
        return data
    try:
        folder.rename(entry)
    except OSError:  # another run wrote the same entry meanwhile: theirs is as good
        shutil.rmtree(folder, ignore_errors=True)
    _clean(root, keep=entry)
    data = _open(entry, meta, cfg, key)
    console.say(f"tokenized data: {data.describe()}")
    return data


def tokenized_samples(train: list[Sample], evaluation: list[Sample], reports: list[DatasetReport],
                      eval_source: str, cfg: RunConfig, renderer: ChatRenderer) -> TokenizedData:
    """Samples a command brings itself (an evaluation's set), tokenized into a temporary folder."""
    settings = Settings(renderer, cfg.data.train_on, cfg.data.max_seq_length, None)
    folder = _temporary_folder(None)
    for name, samples in (("train", train), ("eval", evaluation)):
        if name == "train" or samples:
            writer = SplitWriter(folder / f"{name}.arrow")
            try:
                write_samples(samples, settings, writer)
            finally:
                writer.close()
    meta = {"reports": [asdict(r) for r in reports], "eval_source": eval_source, "given": True}
    return _open(folder, meta, cfg, None)


def _temporary_folder(root: Path | None) -> Path:
    """A new folder to write an entry in: under the cache root (renamed into place once whole), or, not cached,
    a temporary folder removed when the process ends."""
    if root is None:
        import atexit

        folder = Path(tempfile.mkdtemp(prefix="lora-ft-tokens-"))
        atexit.register(shutil.rmtree, folder, True)
        return folder
    try:
        return Path(tempfile.mkdtemp(prefix=".writing-", dir=root))  # the root exists: its lock is held
    except OSError as exc:
        raise _unwritable(root, exc) from exc


def _unwritable(root: Path, exc: OSError) -> UserError:
    return UserError(f"cannot create the tokenized data cache in {root}: {exc.strerror or exc}",
                     fix="set data.cache_dir to a writable folder, or pass --no-cache")


def _is_key(name: str) -> bool:
    return len(name) == KEY_LENGTH and all(c in "0123456789abcdef" for c in name)


def _is_entry(path: Path) -> bool:
    """A folder this cache wrote: named by a key, its meta file naming the same key (data.cache_dir may point
    into a folder that also holds the user's own files; those are never touched)."""
    try:
        return _is_key(path.name) and json.loads((path / META_FILE).read_text()).get("key") == path.name
    except (OSError, ValueError, AttributeError):
        return False


def _clean(root: Path, keep: Path) -> None:
    """Remove entries unused for :data:`UNUSED_DAYS`, and the temporary folders and locks of writers that died;
    nothing else in the folder."""
    now = time.time()
    for path in root.iterdir():
        try:
            if path.name.startswith(".") and path.name.endswith(".lock") and _is_key(path.name[1:-len(".lock")]):
                entry = root / path.name[1:-len(".lock")]
                if not entry.exists() and now - path.stat().st_mtime > STALE_TEMP_HOURS * 3600:
                    path.unlink(missing_ok=True)
                continue
            if path == keep or not path.is_dir():
                continue
            if path.name.startswith(".writing-"):
                if now - path.stat().st_mtime > STALE_TEMP_HOURS * 3600:
                    shutil.rmtree(path, ignore_errors=True)
            elif _is_entry(path) and now - (path / META_FILE).stat().st_mtime > UNUSED_DAYS * 86400:
                shutil.rmtree(path, ignore_errors=True)
        except OSError:
            continue
