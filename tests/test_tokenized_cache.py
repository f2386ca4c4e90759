"""Tokenized data on disk (lora_ft.tokenized): the same tokens as reading into memory, written in parallel, reused
by the next command, re-tokenized when anything that changes the tokens changes, never read half-written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from lora_ft import console
from lora_ft.config import load_config
from lora_ft.data import load_data, tokenization
from lora_ft.model import load_chat_tokenizer
from lora_ft.rundir.resume import data_fingerprint
from lora_ft.tokenized import cache as cache_lib
from lora_ft.tokenized import folders, keys, tokenized_data, writing

from .conftest import build_tokenizer, write_config, write_jsonl


def _rows(n: int) -> list[dict]:
    """Varied rows, some long, a few unusable, one exact duplicate of another."""
    rows = []
    for i in range(n):
        answer = " ".join(["Consideration is something of value exchanged by each party."] * (1 + i % 7))
        rows.append({"instruction": f"What is consideration in contract {i}?", "input": "" if i % 3 else
                     f"Clause {i}: the tenant shall pay rent.", "output": answer})
    rows[5] = {"instruction": "no answer here", "output": ""}  # dropped: empty answer
    rows[9] = dict(rows[8])  # a duplicate
    return rows


@pytest.fixture
def setup(tmp_path, tiny_llama):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    write_jsonl(data_dir / "train.jsonl", _rows(2500))
    path = write_config(tmp_path / "cfg.yaml", tiny_llama, data_dir, eval_file=None)
    return path, tmp_path / "cache"


def _entries(cache_dir) -> list:
    """The cache's entries (its lock files aside)."""
    return [p for p in cache_dir.iterdir() if p.is_dir()]


def _load(path, cache_dir, *overrides):
    loaded = load_config(path, [f"data.cache_dir={cache_dir}", *overrides])
    chat = load_chat_tokenizer(loaded, loaded.config.model)
    return loaded, chat


def _tokenized(path, cache_dir, *overrides, cache=True, workers=None):
    loaded, chat = _load(path, cache_dir, *overrides)
    said = []
    with console.capture(said.append):
        data = tokenized_data(loaded, loaded.config, chat.renderer, cache=cache, workers=workers)
    return data, " ".join(said)


def _in_memory(path, cache_dir, *overrides):
    """The tokens as reading every sample into memory makes them (the path the cache replaces)."""
    loaded, chat = _load(path, cache_dir, *overrides)
    data = load_data(loaded)
    cfg = loaded.config.data
    tokens = [tokenization.tokenize_samples(samples, chat.renderer, cfg.max_seq_length, cfg.train_on,
                                            "truncate" if cfg.overlength == "error" else cfg.overlength)
              for samples in (data.train, data.eval)]
    return data, tokens


def _same_as_in_memory(data, path, cache_dir, *overrides):
    memory, (train, evaluation) = _in_memory(path, cache_dir, *overrides)
    assert data.train.kept_tokens() == (train.input_ids, train.labels)
    assert data.eval.kept_tokens() == (evaluation.input_ids, evaluation.labels)
    assert data.eval_source == memory.eval_source
    assert [(r.rows_read, r.kept, r.dropped, r.sha256) for r in data.reports] == \
        [(r.rows_read, r.kept, r.dropped, r.sha256) for r in memory.reports]
    assert data.tokens_sha256() == data_fingerprint(train.input_ids, train.labels, evaluation.input_ids,
                                                    evaluation.labels, memory.reports)["tokens_sha256"]
    assert data.train.over_length == len(train.over_length) and data.train.tokens == train.tokens
    assert data.train.trained_tokens == train.trained_tokens


def test_the_cache_holds_the_same_tokens_as_reading_into_memory_and_is_reused(setup):
    path, cache_dir = setup
    first, said = _tokenized(path, cache_dir, "data.max_seq_length=64")
    assert not first.reused and "cached in" in said
    _same_as_in_memory(first, path, cache_dir, "data.max_seq_length=64")
    second, said = _tokenized(path, cache_dir, "data.max_seq_length=64")
    assert second.reused and second.key == first.key and "reused from the cache" in said
    _same_as_in_memory(second, path, cache_dir, "data.max_seq_length=64")
    assert [p.name for p in _entries(cache_dir)] == [first.key]


def test_parallel_tokenizing_writes_what_one_process_writes(setup):
    path, cache_dir = setup
    one, _ = _tokenized(path, cache_dir, cache=False, workers=1)
    two, _ = _tokenized(path, cache_dir, cache=False, workers=2)
    assert len(one.train) > 2 * writing.ROWS_PER_CHUNK  # several chunks, spread over the workers
    assert one.train.kept_tokens() == two.train.kept_tokens()
    assert one.train.locations(range(len(one.train))) == two.train.locations(range(len(two.train)))
    assert [(r.rows_read, r.dropped) for r in one.reports] == [(r.rows_read, r.dropped) for r in two.reports]
    assert one.tokens_sha256() == two.tokens_sha256()


def test_max_samples_stops_at_the_same_row_with_workers(tmp_path, tiny_llama):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    write_jsonl(data_dir / "train.jsonl", _rows(2500))
    path = write_config(tmp_path / "cfg.yaml", tiny_llama, data_dir, eval_file=None)
    text = path.read_text().replace(f"    - path: {data_dir / 'train.jsonl'}\n",
                                    f"    - path: {data_dir / 'train.jsonl'}\n      max_samples: 1500\n")
    path.write_text(text)
    memory, _ = _in_memory(path, tmp_path / "c")
    for workers in (1, 2):
        data, _ = _tokenized(path, tmp_path / "c", cache=False, workers=workers)
        assert (data.reports[0].rows_read, data.reports[0].kept, data.reports[0].dropped) == \
            (memory.reports[0].rows_read, memory.reports[0].kept, memory.reports[0].dropped)
        assert data.reports[0].kept == 1500 and data.reports[0].rows_read == 1501  # row 5 was dropped


@pytest.mark.parametrize("change", ["file", "columns", "system_prompt", "train_on", "max_seq_length", "template",
                                    "tokenizer", "max_samples"])
def test_each_key_changes_the_entry(setup, tmp_path, change):
    path, cache_dir = setup
    base, _ = _tokenized(path, cache_dir)
    overrides = {"system_prompt": ["data.system_prompt=You are careful."], "train_on": ["data.train_on=all"],
                 "max_seq_length": ["data.max_seq_length=48"],
                 "template": ["model.chat_template=alpaca"],
                 "max_samples": ["data.train.0.max_samples=100"]}.get(change, [])
    data_file = load_config(path).config.data.train[0].path
    if change == "file":
        rows = _rows(2500)
        rows[100]["output"] = "A different answer."
        write_jsonl(Path(data_file), rows)
    elif change == "columns":
        rows = [{"question": r["instruction"], "input": r.get("input", ""), "output": r["output"]}
                for r in _rows(2500)]
        write_jsonl(tmp_path / "renamed.jsonl", rows)
        overrides = [f"data.train.0.path={tmp_path / 'renamed.jsonl'}", "data.train.0.columns.instruction=question"]
    elif change == "tokenizer":  # the same model with a tokenizer whose EOS differs
        other = tmp_path / "other-model"
        shutil.copytree(load_config(path).config.model.base, other)
        build_tokenizer(other, eos="<|endoftext|>")
        overrides = [f"model.base={other}"]
    changed, said = _tokenized(path, cache_dir, *overrides)
    assert not changed.reused and changed.key != base.key, said
    _same_as_in_memory(changed, path, cache_dir, *overrides)
    again, _ = _tokenized(path, cache_dir, *overrides)
    assert again.reused and again.key == changed.key


@pytest.mark.parametrize("change", [["data.overlength=drop", "data.max_seq_length=64"],
                                    ["data.eval_fraction=0.2"], ["train.seed=7"]])
def test_what_only_selects_rows_reuses_the_entry_and_selects_as_in_memory(setup, change):
    path, cache_dir = setup
    base, _ = _tokenized(path, cache_dir, *[c for c in change if "max_seq_length" in c])
    changed, said = _tokenized(path, cache_dir, *change)
    assert changed.reused and changed.key == base.key, said
    _same_as_in_memory(changed, path, cache_dir, *change)
    assert changed.tokens_sha256() != base.tokens_sha256()


def test_a_half_written_entry_is_never_read(setup, monkeypatch):
    path, cache_dir = setup
    real_write = writing.SplitWriter.write
    calls = []

    def dies_midway(self, batch):  # the process killed after the first chunk reached the disk
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        real_write(self, batch)

    monkeypatch.setattr(writing.SplitWriter, "write", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        _tokenized(path, cache_dir, workers=1)
    assert not _entries(cache_dir)  # nothing left that a later run could take for an entry
    monkeypatch.setattr(writing.SplitWriter, "write", real_write)
    # a writer killed outright leaves its temporary folder; an entry without its meta file is not one either
    (cache_dir / ".writing-dead").mkdir()
    (cache_dir / ".writing-dead" / "train.arrow").write_bytes(b"half")
    data, said = _tokenized(path, cache_dir)
    assert not data.reused and "cached in" in said
    _same_as_in_memory(data, path, cache_dir)
    (data.path / cache_lib.META_FILE).unlink()
    again, said = _tokenized(path, cache_dir)
    assert not again.reused


def test_a_damaged_entry_is_tokenized_again(setup):
    path, cache_dir = setup
    first, _ = _tokenized(path, cache_dir)
    (first.path / "train.arrow").write_bytes(b"not arrow")
    again, said = _tokenized(path, cache_dir)
    assert not again.reused and "cannot be read" in said
    _same_as_in_memory(again, path, cache_dir)


def test_no_cache_leaves_no_entry_and_the_data_command_says_where_the_cache_is(setup, capsys):
    from lora_ft import cli

    path, cache_dir = setup
    assert cli.main(["data", str(path), "--set", f"data.cache_dir={cache_dir}", "--no-cache"]) == 0
    assert not cache_dir.exists() or not _entries(cache_dir)
    first = capsys.readouterr().out
    assert cli.main(["data", str(path), "--set", f"data.cache_dir={cache_dir}"]) == 0
    assert cli.main(["data", str(path), "--set", f"data.cache_dir={cache_dir}"]) == 0
    cached = capsys.readouterr().out
    body = first.split("== train", 1)[1]
    assert body in cached  # the same report, from the cache
    meta = json.loads(_entries(cache_dir)[0].joinpath(cache_lib.META_FILE).read_text())
    assert meta["parts"]["max_seq_length"] == 128 and meta["reports"][0]["rows_read"] == 2500


def test_training_records_the_cache_key_and_resume_finds_the_same_data(tmp_path, tiny_llama, legal_data):
    from lora_ft.commands.train import train

    path = write_config(tmp_path / "cfg.yaml", tiny_llama, legal_data)
    result = train(load_config(path, [f"data.cache_dir={tmp_path / 'cache'}"]))
    record = result.manifest["tokenized_data"]
    assert record["cache_key"] == _entries(tmp_path / "cache")[0].name and not record["reused"]


def test_a_second_process_waits_for_the_one_tokenizing_the_same_data(setup):
    import threading

    path, cache_dir = setup
    loaded, chat = _load(path, cache_dir)
    key = cache_lib.key_of(cache_lib.key_parts(loaded, loaded.config, chat.renderer))
    held = threading.Event()
    release = threading.Event()

    def other_process():  # holds the lock as a process tokenizing the same data would, until this one waits
        with folders.writing_lock(cache_dir, key):
            held.set()
            release.wait(600)  # a hang guard only: released as soon as the waiting notice is said

    said = []

    def listen(line: str) -> None:
        said.append(line)
        if "waiting for it" in line:
            release.set()

    thread = threading.Thread(target=other_process)
    thread.start()
    held.wait(600)
    with console.capture(listen):
        data = tokenized_data(loaded, loaded.config, chat.renderer)
    thread.join()
    assert release.is_set(), "the second process said it waits before the lock was released"
    assert any("waiting for it" in line for line in said) and not data.reused
    _same_as_in_memory(data, path, cache_dir)


def test_a_full_disk_while_writing_is_a_clear_error_that_leaves_no_entry(setup, monkeypatch):
    import errno

    from lora_ft.errors import UserError

    path, cache_dir = setup

    def full(self, batch):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(writing.SplitWriter, "write", full)
    with pytest.raises(UserError) as caught:
        _tokenized(path, cache_dir, workers=1)
    message = caught.value.render()
    assert "No space left on device" in message and "--no-cache" in message and "data.cache_dir" in message
    assert not _entries(cache_dir)


def test_a_cache_folder_that_cannot_be_made_is_a_clear_error(setup, tmp_path):
    from lora_ft.errors import UserError

    path, _ = setup
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(UserError) as caught:
        _tokenized(path, blocker / "cache")
    assert "cannot create the tokenized data cache" in caught.value.render()
    assert "--no-cache" in caught.value.render()


def test_the_clean_up_removes_only_old_entries_it_wrote(setup, tmp_path):
    import os
    import time

    path, cache_dir = setup
    first, _ = _tokenized(path, cache_dir)
    month_ago = time.time() - 31 * 86400
    stale = cache_dir / ("0" * keys.KEY_LENGTH)  # an entry of ours, unused for a month
    shutil.copytree(first.path, stale)
    meta = json.loads((stale / cache_lib.META_FILE).read_text())
    (stale / cache_lib.META_FILE).write_text(json.dumps({**meta, "key": stale.name}))
    users = cache_dir / "my-notes"  # the user's own folder, with a file of the same name, just as old
    users.mkdir()
    (users / cache_lib.META_FILE).write_text("{}")
    for old in (stale / cache_lib.META_FILE, users / cache_lib.META_FILE):
        os.utime(old, (month_ago, month_ago))
    changed, _ = _tokenized(path, cache_dir, "data.max_seq_length=48")  # a new entry is written: the clean-up runs
    assert not stale.exists() and (users / cache_lib.META_FILE).is_file() and first.path.is_dir()
    assert changed.path.is_dir()
