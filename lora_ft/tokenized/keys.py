"""What finds a tokenized-data entry: its key, a hash of everything that changes the tokens.

The data files count by their contents, hashed (SHA-256) on every command: never by their size, times or inode,
which a copy (``cp -p``) or a rewrite can keep while the contents change. The same hashes are the ones the run's
manifest records, so the key and the manifest cannot disagree. A file counts by its name relative to the dataset's
path, never by how the path is spelled: ``sub/../data/x.jsonl``, the absolute path and a symbolic link share one
entry, and so does a copy in another folder (where each row is found is shown for the files the command reads,
:func:`shown_files`).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from lora_ft.methods import method_of
from lora_ft.config import DatasetSource, LoadedConfig, RunConfig
from lora_ft.data.loading import data_files
from lora_ft.data.readers import display
from lora_ft.files import file_sha256
from lora_ft.data.tokenization import ChatRenderer

CACHE_FORMAT = 2  # bump when the tokens, the columns or the meta file written for the same inputs change
KEY_LENGTH = 24  # hex characters of an entry's key


def cache_root(loaded: LoadedConfig, cfg: RunConfig) -> Path:
    """``data.cache_dir`` (relative to the config file), else ``$LORA_FT_DATA_CACHE``, else ``tokenized/`` in
    lora-ft's cache folder."""
    if cfg.data.cache_dir:
        return loaded.resolve_path(cfg.data.cache_dir)
    if os.environ.get("LORA_FT_DATA_CACHE"):
        return Path(os.environ["LORA_FT_DATA_CACHE"]).expanduser()
    from lora_ft.embedded import cache_root as lora_ft_cache

    return lora_ft_cache() / "tokenized"


def sources(cfg: RunConfig) -> list[DatasetSource]:
    """Every dataset entry, train then eval: the order of an entry's reports and of its ``shown`` files."""
    return [*cfg.data.train, *cfg.data.eval]


def listing(loaded: LoadedConfig, cfg: RunConfig) -> list[list[Path]]:
    """Each dataset entry's local files (none for a hub dataset), train then eval, listed once: the key is made of
    these files, and exactly these are read."""
    return [data_files(source, loaded) for source in sources(cfg)]


def file_hashes(loaded: LoadedConfig, cfg: RunConfig, listed: list[list[Path]] | None = None) -> dict[Path, str]:
    """The SHA-256 of every local data file of the run (``listed``, else listed now), read now (a file named twice
    is read once)."""
    hashes: dict[Path, str] = {}
    for files in listing(loaded, cfg) if listed is None else listed:
        for path in files:
            if path not in hashes:
                hashes[path] = file_sha256(path)
    return hashes


def shown_files(listed: list[list[Path]]) -> list[list[str]]:
    """How each dataset entry's files are shown in row locations (relative to the current folder), entry by entry:
    an entry keeps what its writer showed, and a command that reads it shows its own."""
    return [[display(path) for path in files] for files in listed]


def key_parts(loaded: LoadedConfig, cfg: RunConfig, renderer: ChatRenderer, hashes: dict[Path, str] | None = None,
              listed: list[list[Path]] | None = None) -> dict:
    """Everything that changes the tokenized rows, as plain data. ``listed`` and ``hashes``: the files
    (:func:`listing`) and their SHA-256 (:func:`file_hashes`), when the caller has them already."""
    listed = listing(loaded, cfg) if listed is None else listed
    hashes = file_hashes(loaded, cfg, listed) if hashes is None else hashes
    trains = len(cfg.data.train)

    def source(entry: DatasetSource, files: list[Path]) -> dict:
        settings = {"format": entry.format, "columns": dict(entry.columns), "split": entry.split,
                    "max_samples": entry.max_samples}
        if not files:  # a hub dataset: its name and split
            return {"hub": entry.path, **settings}
        top = loaded.resolve_path(entry.path)
        names = [f.relative_to(top).as_posix() if top.is_dir() else f.name for f in files]
        return {"files": [[name, hashes[f]] for name, f in zip(names, files)], **settings}

    tokenizer = renderer.tokenizer
    pairs = method_of(cfg.method).pairs
    return {
        "cache_format": CACHE_FORMAT,
        "method": cfg.method,
        "train": [source(s, f) for s, f in zip(cfg.data.train, listed[:trains])],
        "eval": [source(s, f) for s, f in zip(cfg.data.eval, listed[trains:])],
        "system_prompt": cfg.data.system_prompt,
        "reasoning": cfg.data.reasoning,
        # preference tokens are kept whole and always train on the answers: the limits apply when they are read
        "train_on": None if pairs else cfg.data.train_on,
        "max_seq_length": None if pairs else cfg.data.max_seq_length,
        "tokenizer": hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode()).hexdigest(),
        "tokenizer_class": type(tokenizer).__name__,
        "special_tokens": {k: str(v) for k, v in sorted(tokenizer.special_tokens_map.items())},
        "chat_template": hashlib.sha256(renderer.template.encode()).hexdigest(),
    }


def key_of(parts: dict) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:KEY_LENGTH]


def is_key(name: str) -> bool:
    return len(name) == KEY_LENGTH and all(c in "0123456789abcdef" for c in name)
