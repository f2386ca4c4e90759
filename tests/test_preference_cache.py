"""Preference pairs (dpo, orpo, kto) through the tokenized-data cache: the same pairs and tokens as reading them into
memory, tokenized in parallel, reused by the next command, and the length limits applied without tokenizing again."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest

from lora_ft import cli, console
from lora_ft.config import load_config
from lora_ft.data import load_data
from lora_ft.data.statistics import find_duplicates, find_leakage, split_duplicates, split_leakage
from lora_ft.model import load_chat_tokenizer
from lora_ft.data.preference_tokens import encode_preferences, fit_preferences
from lora_ft.preparation import prepare
from lora_ft.tokenized import PreferenceData, writing

from .conftest import write_config, write_jsonl


def _pairs(n: int, offset: int = 0) -> list[dict]:
    """Pairs of varied length (some longer than 128 tokens), a few unusable rows, two with a system prompt."""
    rows = []
    for i in range(offset, offset + n):
        long = " ".join(["the party shall pay on demand within thirty days of notice"] * (i % 9))
        chosen = f"Consideration is something of value exchanged by each party {i}."
        rejected = f"{chosen} Except on Sundays." if i % 10 == 4 else f"The tenant shall pay rent on day {i}. {long}"
        rows.append({"prompt": f"What is consideration in contract {i}? {long}", "chosen": chosen,
                     "rejected": rejected})
    rows[3] = {"prompt": "no answers here"}  # dropped: neither answer
    rows[7] = {"prompt": "same", "chosen": "", "rejected": "x"}  # dropped: an empty answer
    rows[11]["system"] = "You are a careful legal assistant."
    for copy in range(20, len(rows), 100):  # exact duplicates, some of which a held-out eval split will share
        rows[copy] = dict(rows[19])
    return rows


@pytest.fixture
def pairs_config(tmp_path, tiny_llama):
    data_dir = tmp_path / "pairs"
    data_dir.mkdir()
    train = _pairs(2300)
    write_jsonl(data_dir / "train.jsonl", train)
    write_jsonl(data_dir / "eval.jsonl", _pairs(40, offset=5000) + [train[19]])  # one leaks from train

    def config(method: str, eval_file: str | None = None, extra: str = ""):
        path = write_config(tmp_path / f"{method}.yaml", tiny_llama, data_dir, eval_file=eval_file,
                            output_dir=tmp_path / f"run-{method}", extra=extra)
        path.write_text(f"method: {method}\n{path.read_text()}")
        return path

    return config, tmp_path / "cache"


def _prepared(path, cache_dir, *overrides, cache=True):
    loaded = load_config(path, [f"data.cache_dir={cache_dir}", *overrides])
    said = []
    with console.capture(said.append):
        prepared = prepare(loaded, checks=False, cache=cache)
    return prepared, " ".join(said)


def _in_memory(path, cache_dir, *overrides):
    """The pairs and tokens as reading every pair into memory makes them (the path the cache replaces)."""
    loaded = load_config(path, [f"data.cache_dir={cache_dir}", *overrides])
    renderer = load_chat_tokenizer(loaded, loaded.config.model).renderer
    data, cfg = load_data(loaded), loaded.config
    tokens = [fit_preferences(encode_preferences(samples, renderer), cfg.data.max_seq_length, cfg.data.overlength,
                              cfg.method_settings.max_prompt_length) for samples in (data.train, data.eval)]
    return data, tokens


def _same_as_in_memory(prepared, path, cache_dir, *overrides):
    memory, (train, evaluation) = _in_memory(path, cache_dir, *overrides)
    assert asdict(prepared.train_tokens) == asdict(train)
    assert asdict(prepared.eval_tokens) == asdict(evaluation)
    assert list(prepared.data.train) == memory.train  # the samples themselves
    assert list(prepared.data.eval or []) == memory.eval
    assert prepared.data.eval_source == memory.eval_source
    # duplicates and leakage from the stored content keys, as from the samples
    assert split_duplicates(prepared.data.train, "train") == find_duplicates(memory.train, "train")
    assert split_leakage(prepared.data.train, prepared.data.eval) == find_leakage(memory.train, memory.eval)
    assert [asdict(r) for r in prepared.data.reports] == [asdict(r) for r in memory.reports]


@pytest.mark.parametrize("method,eval_file", [("dpo", None), ("kto", "eval.jsonl")])
def test_pairs_are_cached_with_the_tokens_of_reading_into_memory_and_reused(pairs_config, method, eval_file):
    config, cache_dir = pairs_config
    path = config(method, eval_file)
    first, said = _prepared(path, cache_dir)
    assert isinstance(first.data, PreferenceData) and not first.data.reused and "cached in" in said
    assert first.data.reports[0].dropped and first.train_tokens.over_length  # bad rows named; long pairs cut
    assert split_duplicates(first.data.train, "train").extra_copies >= 10
    assert split_leakage(first.data.train, first.data.eval).count >= 1
    if method == "kto":  # a pair is two labelled answers, each with the prompt
        report = first.data.reports[0]
        assert len(first.data.train) == report.kept == 2 * (report.rows_read - report.dropped_count)
    else:
        assert first.data.eval_source.startswith("115 rows held out")  # eval_fraction 0.05 of the kept pairs
    _same_as_in_memory(first, path, cache_dir)
    second, said = _prepared(path, cache_dir)
    assert second.data.reused and second.data.key == first.data.key and "reused from the cache" in said
    _same_as_in_memory(second, path, cache_dir)
    # the length limits and the eval split select among the stored pairs: the entry is reused, as memory would give
    for overrides in (["data.max_seq_length=64", "data.overlength=drop"], [f"{method}.max_prompt_length=16"],
                      ["train.seed=7"]):
        changed, _ = _prepared(path, cache_dir, *overrides)
        assert changed.data.reused and changed.data.key == first.data.key, overrides
        _same_as_in_memory(changed, path, cache_dir, *overrides)
    # what changes the tokens makes a new entry
    other, _ = _prepared(path, cache_dir, "data.system_prompt=Answer briefly.")
    assert not other.data.reused and other.data.key != first.data.key
    _same_as_in_memory(other, path, cache_dir, "data.system_prompt=Answer briefly.")


def test_pairs_tokenized_in_parallel_are_those_of_one_process(pairs_config, monkeypatch):
    config, cache_dir = pairs_config
    path = config("kto")
    text = path.read_text().replace("train.jsonl\n", "train.jsonl\n      max_samples: 2001\n", 1)
    path.write_text(text)
    results = []
    for workers in (1, 2):
        monkeypatch.setattr(writing, "worker_count", lambda size, requested=None, n=workers: n)
        prepared, _ = _prepared(path, cache_dir, cache=False)
        results.append(prepared)
    one, two = results
    assert len(one.data.train) + len(one.data.eval) == 2001 > 1.5 * writing.ROWS_PER_CHUNK
    assert asdict(one.train_tokens) == asdict(two.train_tokens) and list(one.data.train) == list(two.data.train)
    assert [asdict(r) for r in one.data.reports] == [asdict(r) for r in two.data.reports]
    _same_as_in_memory(two, path, cache_dir)  # max_samples cuts a KTO pair's halves where memory does


def test_a_dpo_run_and_its_data_report_share_one_tokenization(pairs_config, capsys):
    config, cache_dir = pairs_config
    path = config("dpo", "eval.jsonl")
    path.write_text(path.read_text().replace("  max_seq_length: 128\n",
                                             f"  max_seq_length: 128\n  cache_dir: {cache_dir}\n"))
    assert cli.main(["data", str(path)]) == 0
    report = capsys.readouterr().out
    assert "tokenized in" in report and "cached in" in report
    assert cli.main(["train", str(path), "--set", "train.max_steps=2"]) == 0
    out = capsys.readouterr().out
    assert "tokenized data: reused from the cache" in out
    manifest = json.loads((path.parent / "run-dpo" / "manifest.json").read_text())
    record = manifest["tokenized_data"]
    assert record["reused"] and record["cache_key"] == [p.name for p in cache_dir.iterdir() if p.is_dir()][0]


@pytest.mark.parametrize("method", ["dpo", "kto"])
def test_the_pair_report_reads_pairs_a_chunk_at_a_time_with_the_figures_of_training(pairs_config, monkeypatch,
                                                                                       method):
    from lora_ft.data_report import pairs as pair_report

    config, cache_dir = pairs_config
    overrides = ["data.max_seq_length=48", f"{method}.max_prompt_length=40"]
    prepared, _ = _prepared(config(method, "eval.jsonl"), cache_dir, *overrides)
    cfg = prepared.config

    def report():
        return asdict(pair_report.analyse_pairs("train", prepared.encoded_pairs("train"), cfg.data,
                                                cfg.method_settings.max_prompt_length))

    whole = report()
    monkeypatch.setattr(pair_report, "CHUNK_PAIRS", 7)
    assert report() == whole
    tokens = prepared.train_tokens  # what training takes
    assert whole["kept"] == len(tokens) and whole["tokens"] == tokens.tokens
    assert whole["trained_tokens"] == tokens.trained_tokens and whole["over_length"] == len(tokens.over_length)
    assert whole["cut_before_difference"] == len(tokens.cut_before_difference)
    assert (whole["cut_before_difference"] > 0) == (method == "dpo")  # KTO's answers are unpaired
    assert whole["over_length_locations"] == tokens.over_length[:len(whole["over_length_locations"])]
    # what the limit cuts off the answers: of the pairs kept cut, and of those then left out as equal
    assert whole["trained_tokens_past_limit"] >= tokens.truncated_trained_tokens > 0


def test_while_another_thread_runs_the_workers_start_from_a_fork_server(pairs_config, monkeypatch):
    """A process with another thread (a tracker's writer, a progress monitor) never forks its tokenizing workers:
    they start from a fork server, and tokenize as one process does."""
    import threading

    config, cache_dir = pairs_config
    path = config("dpo")
    alone, _ = _prepared(path, cache_dir, cache=False)
    started = []
    real_context = writing._worker_context
    monkeypatch.setattr(writing, "worker_count", lambda size, requested=None: 2)
    monkeypatch.setattr(writing, "_worker_context", lambda settings: started.append(real_context(settings))
                        or started[-1])
    stop = threading.Event()
    other = threading.Thread(target=stop.wait, daemon=True)
    other.start()
    try:
        workers, _ = _prepared(path, cache_dir, cache=False)
    finally:
        stop.set()
        other.join()
    assert [c.get_start_method() for c in started] == ["forkserver"]
    assert asdict(workers.train_tokens) == asdict(alone.train_tokens)
    assert list(workers.data.train) == list(alone.data.train)
