"""`lora-ft data`: the data report (counts, faults, lengths, truncation, duplicates, leakage, rendered samples)
and the over-length policy (data.overlength)."""

from __future__ import annotations

import inspect
import itertools
import json
import re

import pytest

from lora_ft import cli
from lora_ft.data_report import report as data_report
from lora_ft.data import statistics
from lora_ft.config import load_config
from lora_ft.data import Sample, load_data
from lora_ft.errors import UserError
from lora_ft.data.tokenization import ChatRenderer, tokenize_samples

from .conftest import legal_rows, write_config, write_jsonl

ANSWER = "Consideration is something of value exchanged by each party."


def _chat(question: str, *answers: str) -> dict:
    """A messages row: the question, then for each answer a follow-up user turn before it (after the first)."""
    turns = [{"role": "user", "content": question}]
    for index, answer in enumerate(answers):
        if index:
            turns.append({"role": "user", "content": f"And {index}?"})
        turns.append({"role": "assistant", "content": answer})
    return {"messages": turns}


def _config(tmp_path, model_dir, train_rows=None, eval_rows=None, *, train_bytes: bytes | None = None,
            train_file: str = "train.jsonl", overrides: tuple[str, ...] = ()):
    data_dir = tmp_path / "data"
    data_dir.mkdir(exist_ok=True)
    if train_bytes is not None:
        (data_dir / train_file).write_bytes(train_bytes)
    else:
        write_jsonl(data_dir / train_file, train_rows)
    if eval_rows is not None:
        write_jsonl(data_dir / "eval.jsonl", eval_rows)
    path = write_config(tmp_path / "cfg.yaml", model_dir, data_dir, train_file=train_file,
                        eval_file="eval.jsonl" if eval_rows is not None else None)
    overrides = list(overrides) + ([] if eval_rows is not None else ["data.eval_fraction=0"])
    return path, overrides


def _report(tmp_path, model_dir, *args, samples: int = 1, **kwargs) -> data_report.DataReport:
    path, overrides = _config(tmp_path, model_dir, *args, **kwargs)
    return data_report.build_report(load_config(path, overrides), samples=samples)


# ---------------------------------------------------------------------------------------------------------------
# Counts and faults


def _messy_bytes() -> bytes:
    """A messages-format JSONL with a BOM, CRLF line ends and one fault of each kind, one per line."""
    lines = [
        json.dumps(_chat("What is a contract?", "A binding agreement.")),  # 1 ok (after the BOM)
        '{"messages": [{"role": "user", "content": "Q"}',  # 2 invalid JSON
        json.dumps({"messages": [{"role": "user", "content": "Q"}, {"role": "robot", "content": "A"}]}),  # 3
        json.dumps({"text": "a row without messages"}),  # 4 missing field
        json.dumps(_chat("What is a tort?", "   ")),  # 5 empty answer
        "",  # 6 blank: skipped, not a row
        json.dumps(_chat("Explain. " + "word " * 60, "Short.")),  # 7 ok, but longer than max_seq_length
        json.dumps(_chat("What is consideration?", ANSWER)),  # 8 ok
        json.dumps(_chat("What is an offer?", "A proposal to contract.")),  # 9 ok
    ]
    return ("\ufeff" + "\r\n".join(lines) + "\r\n").encode("utf-8")


def test_messy_file_counts_add_up_and_every_fault_is_named(tiny_llama, tmp_path):
    report = _report(tmp_path, tiny_llama, train_bytes=_messy_bytes(), eval_rows=legal_rows(3),
                     overrides=("data.max_dropped_fraction=0.9",))
    train_file, eval_file = report.datasets
    assert (train_file.rows_read, train_file.kept, train_file.dropped_count) == (8, 4, 4)
    for dataset in report.datasets:
        assert dataset.rows_read == dataset.kept + dataset.dropped_count
    assert eval_file.format == "alpaca" and eval_file.kept == 3

    where = {reason: locations for reason, locations in train_file.dropped.items()}
    invalid = [locs for reason, locs in where.items() if reason.startswith("invalid JSON")]
    assert len(invalid) == 1 and invalid[0][0].endswith("train.jsonl:2")
    assert where["unknown role 'robot' (use system, user, assistant or tool)"][0].endswith("train.jsonl:3")
    assert where["missing field 'messages'"][0].endswith("train.jsonl:4")
    assert where["empty answer"][0].endswith("train.jsonl:5")

    train = report.split("train")
    assert train.samples == 4 and train.over_length == 1
    assert train.over_length_locations[0].endswith("train.jsonl:7")
    assert train.trained_tokens_past_limit > 0  # the long sample's answer lies past the limit
    assert train.no_trained_token == 1 and train.no_trained_token_locations[0].endswith("train.jsonl:7")
    assert train.kept == 3

    text = data_report.render_text(report)
    for line in (2, 3, 4, 5, 7):
        assert f"train.jsonl:{line}" in text
    assert "8 rows read, 4 kept, 4 dropped" in text
    assert report.ok and any("no trained token" in w for w in report.warnings)


def test_too_many_dropped_rows_are_a_problem_not_a_crash(tiny_llama, tmp_path):
    report = _report(tmp_path, tiny_llama, train_bytes=_messy_bytes())
    assert not report.ok
    assert "4 of 8 rows are unusable" in report.problems[0] and "max_dropped_fraction" in report.problems[0]
    assert "`lora-ft train` would stop" in data_report.render_text(report)


# ---------------------------------------------------------------------------------------------------------------
# Lengths and truncation


def test_length_stats_histogram_and_truncation_on_known_data(tiny_llama, tmp_path):
    # A special token is one token, and raw text gains an EOS: n copies make n + 1 tokens, all trained.
    rows = [{"text": "<|endoftext|>" * (n - 1)} for n in (10, 20, 30, 40, 50)]
    report = _report(tmp_path, tiny_llama, rows, overrides=("data.max_seq_length=35",))
    train = report.split("train")
    assert train.total == statistics.LengthStats(min=10, median=30, p90=46, p99=49.6, max=50, mean=30)
    assert train.answer == train.total and train.prompt == statistics.LengthStats()
    assert sum(b.count for b in train.histogram) == 5 and len(train.histogram) <= 12
    assert train.over_length == 2 and train.trained_tokens_past_limit == (40 - 35) + (50 - 35)
    assert (train.kept, train.tokens, train.trained_tokens) == (5, 10 + 20 + 30 + 35 + 35, 130)

    text = data_report.render_text(report)
    assert "longer than max_seq_length 35: 2" in text and "truncated, losing 20 trained tokens" in text
    assert "max_seq_length 35 is in this range" in text


def test_histogram_buckets_are_round_and_mark_the_limit():
    values = [10, 20, 30, 40, 50]
    buckets = statistics.histogram(values)
    assert len(buckets) <= 12 and sum(b.count for b in buckets) == len(values)
    assert all(a.last + 1 == b.first for a, b in itertools.pairwise(buckets))
    width = buckets[0].last - buckets[0].first + 1
    assert all(b.last - b.first + 1 == width for b in buckets)
    for value in values:
        assert sum(b.count for b in buckets if b.first <= value <= b.last) >= 1
    on_edge = next(b.last for b in buckets[1:-1])
    lines = statistics.histogram_lines(buckets, on_edge)
    marker = next(i for i, line in enumerate(lines) if f"max_seq_length {on_edge}:" in line)
    assert lines[marker + 1].lstrip().startswith(f"{on_edge + 1}-")  # the limit sits between two buckets
    assert "above the longest sample" in statistics.histogram_lines(buckets, 1000)[-1]


def test_length_stats_of_nothing_and_of_one_value():
    assert statistics.LengthStats.of([]) == statistics.LengthStats()
    assert statistics.LengthStats.of([7]) == statistics.LengthStats(7, 7, 7, 7, 7, 7)


# ---------------------------------------------------------------------------------------------------------------
# Duplicates and leakage


def test_duplicates_and_train_eval_leakage_are_found(tiny_llama, tmp_path):
    train_rows = legal_rows(6)
    spaced = dict(train_rows[0], instruction=train_rows[0]["instruction"].replace(" ", "  "))  # same after norm.
    train_rows += [spaced, dict(train_rows[0]), dict(train_rows[3])]  # lines 7, 8, 9
    eval_rows = legal_rows(3, offset=100) + [dict(train_rows[2])]  # eval line 4 is train line 3
    report = _report(tmp_path, tiny_llama, train_rows, eval_rows)

    train_dups = report.duplicates[0]
    assert (train_dups.split, train_dups.groups, train_dups.extra_copies) == ("train", 2, 3)
    biggest = train_dups.first_groups[0]
    assert biggest.count == 3 and [loc.rsplit(":", 1)[1] for loc in biggest.locations] == ["1", "7", "8"]
    assert report.duplicates[1].extra_copies == 0
    assert report.leakage.count == 1
    leak = report.leakage.first[0]
    assert leak.eval_location.endswith("eval.jsonl:4") and leak.train_location.endswith("train.jsonl:3")

    text = data_report.render_text(report)
    assert "train: 3 row(s) repeat another row exactly (2 group(s))" in text
    assert re.search(r"3 copies: \S+train\.jsonl:1, \S+train\.jsonl:7, \S+train\.jsonl:8", text)
    assert "eval rows also in train (leakage): 1" in text
    assert any("also appear in train" in w for w in report.warnings)


def test_train_prints_the_compact_form(tiny_llama, tmp_path):
    train_rows = legal_rows(4) + [legal_rows(1)[0]]
    path, overrides = _config(tmp_path, tiny_llama, train_rows, legal_rows(2))
    lines = statistics.summary_lines(load_data(load_config(path, overrides)))
    assert "format alpaca;" in lines[0] and "5 rows read, 5 kept, 0 dropped" in lines[0]
    assert any(line.startswith("eval data: 2 rows from data.eval") for line in lines)
    assert any("1 row(s) repeat another row exactly" in line for line in lines)


# ---------------------------------------------------------------------------------------------------------------
# The rendered sample


def test_rendered_sample_marks_exactly_the_answers_and_their_end_of_turn(tiny_llama, tmp_path):
    rows = [_chat("What is consideration?", ANSWER, "A promise can be consideration.")]
    report = _report(tmp_path, tiny_llama, rows)
    sample = report.samples[0]
    marked = data_report.marked_text(sample, report.max_seq_length)
    assert re.findall(r"\[\[(.*?)\]\]", marked, re.DOTALL) == [f"{ANSWER}<|im_end|>",
                                                          "A promise can be consideration.<|im_end|>"]
    assert marked.startswith("<|im_start|>user\nWhat is consideration?<|im_end|>")  # the prompt is not trained
    assert sample.trained_tokens == report.split("train").trained_tokens

    colored = data_report.marked_text(sample, report.max_seq_length, color=True)
    assert "[[" not in colored and colored.count(data_report.GREEN) == 2
    text = data_report.render_text(report)
    assert f"[[{ANSWER}<|im_end|>]]" in text and "(trained tokens in [[ ]];" in text


def test_rendered_sample_shows_where_truncation_cuts(tiny_llama, tmp_path):
    rows = [_chat("What is consideration?", "word " * 60)]
    report = _report(tmp_path, tiny_llama, rows, samples=1)
    marked = data_report.marked_text(report.samples[0], report.max_seq_length)
    before, after = marked.split("<<max_seq_length 128: the rest is cut>>")
    assert before.endswith("]]") and "[[" not in after and "<|im_end|>" in after
    assert "cut at max_seq_length 128" in report.samples[0].note


# ---------------------------------------------------------------------------------------------------------------
# The over-length policy


CONVERSATION = [{"role": "user", "content": "What is a contract?"}, {"role": "assistant", "content": "An agreement."}]
LONG = [{"role": "user", "content": "word " * 60}, {"role": "assistant", "content": "Short."}]


def test_truncate_stays_the_default(chat_tokenizer, tiny_llama, tmp_path):
    assert inspect.signature(tokenize_samples).parameters["overlength"].default == "truncate"
    path, overrides = _config(tmp_path, tiny_llama, legal_rows(3))
    assert load_config(path, overrides).config.data.overlength == "truncate"
    renderer = ChatRenderer(chat_tokenizer, chat_tokenizer.chat_template)
    out = tokenize_samples([Sample("x:1", messages=CONVERSATION), Sample("x:2", messages=LONG)], renderer, 64,
                           "answers")
    assert out.truncated == 1 and out.over_length == ["x:2"] and out.locations == ["x:1"]
    assert out.dropped_no_label == ["x:2"]  # its answer was past the limit


def test_drop_leaves_over_length_samples_out_and_names_them(chat_tokenizer):
    renderer = ChatRenderer(chat_tokenizer, chat_tokenizer.chat_template)
    long_answer = [CONVERSATION[0], {"role": "assistant", "content": "word " * 60}]
    out = tokenize_samples([Sample("x:1", messages=CONVERSATION), Sample("x:2", messages=long_answer)], renderer,
                           64, "answers", "drop")
    assert out.over_length == ["x:2"] and out.locations == ["x:1"]
    assert out.truncated == 0 and out.dropped_no_label == [] and all(len(ids) <= 64 for ids in out.input_ids)


def test_error_names_the_first_few_locations_and_how_many(chat_tokenizer):
    renderer = ChatRenderer(chat_tokenizer, chat_tokenizer.chat_template)
    samples = [Sample("ok.jsonl:1", messages=CONVERSATION)] + [
        Sample(f"long.jsonl:{i}", messages=LONG) for i in range(1, 8)]
    with pytest.raises(UserError) as caught:
        tokenize_samples(samples, renderer, 64, "answers", "error")
    rendered = caught.value.render()
    assert "7 sample(s) are longer than data.max_seq_length = 64 tokens" in rendered
    assert all(f"long.jsonl:{i}" in rendered for i in range(1, 6)) and "long.jsonl:6" not in rendered
    assert "and 2 more" in rendered and "data.overlength" in caught.value.fix
    assert "ok.jsonl" not in rendered


def test_error_policy_is_a_problem_in_the_report_and_unknown_values_are_refused(tiny_llama, tmp_path):
    rows = legal_rows(3) + [{"instruction": "Explain. " + "word " * 60, "output": "Short."}]
    report = _report(tmp_path, tiny_llama, rows, train_file="mixed.jsonl", overrides=("data.overlength=error",))
    assert not report.ok and "train: 1 sample(s) are longer" in report.problems[0]
    assert "mixed.jsonl:4" in report.problems[0]
    path, overrides = _config(tmp_path, tiny_llama, legal_rows(3))
    with pytest.raises(UserError, match="overlength"):
        load_config(path, overrides + ["data.overlength=cut"])


# ---------------------------------------------------------------------------------------------------------------
# The command


def test_cli_data_exit_codes_and_json(tiny_llama, tmp_path, capsys):
    path, overrides = _config(tmp_path, tiny_llama, legal_rows(6), legal_rows(2, offset=50))
    sets = [arg for o in overrides for arg in ("--set", o)]
    out_json = tmp_path / "report.json"
    assert cli.main(["data", str(path), *sets, "--samples", "2", "--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    assert "== datasets" in out and "== verdict" in out and "ready to train: 6 samples" in out
    assert out.count("== sample ") == 2
    report = json.loads(out_json.read_text())
    assert report["ok"] is True and report["splits"][0]["name"] == "train"
    assert report["datasets"][0]["rows_read"] == 6 and report["samples"][0]["marked"].count("[[") == 1

    bad = tmp_path / "bad.yaml"
    bad.write_text(path.read_text().replace("max_seq_length: 128", "max_seq_lenght: 128"))
    assert cli.main(["data", str(bad)]) == 2
    assert "unknown key 'data.max_seq_lenght'" in capsys.readouterr().err

    long_rows = legal_rows(3) + [{"instruction": "Explain. " + "word " * 60, "output": "Short."}]
    path, overrides = _config(tmp_path, tiny_llama, long_rows, legal_rows(2), train_file="long.jsonl")
    assert cli.main(["data", str(path), "--set", "data.overlength=error"]) == 2
    assert "would stop" in capsys.readouterr().err


def test_cli_data_plot_writes_a_png_histogram(tiny_llama, tmp_path, capsys):
    # matplotlib comes with the dev set-up (the `plot` extra), so the PNG path itself runs here
    from PIL import Image

    path, _ = _config(tmp_path, tiny_llama, legal_rows(6), legal_rows(2))
    png = tmp_path / "lengths.png"
    assert cli.main(["data", str(path), "--plot", str(png)]) == 0
    with Image.open(png) as image:
        assert image.format == "PNG" and image.width > 300 and image.height > 200
        assert len(set(image.convert("L").getdata())) > 2, "a drawn figure, not a blank image"


def test_cli_data_plot_without_matplotlib_says_how_to_get_it(tiny_llama, tmp_path):
    import subprocess
    import sys

    path, _ = _config(tmp_path, tiny_llama, legal_rows(6), legal_rows(2))
    png = tmp_path / "lengths.png"
    hide = ("import sys, importlib.abc\n"
            "class NotInstalled(importlib.abc.MetaPathFinder):\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] == 'matplotlib':\n"
            "            raise ModuleNotFoundError(name)\n"
            "sys.meta_path.insert(0, NotInstalled())\n"
            "from lora_ft import cli\n"
            f"sys.exit(cli.main(['data', {str(path)!r}, '--plot', {str(png)!r}]))\n")
    result = subprocess.run([sys.executable, "-c", hide], capture_output=True, text=True, timeout=900)
    assert result.returncode == 2, result.stderr
    assert "--plot needs matplotlib" in result.stderr and "lora-ft[plot]" in result.stderr and not png.exists()
