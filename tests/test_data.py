"""Data formats, files and faults: every usable row read, every bad row named by file and line."""

from __future__ import annotations

import json

import pytest

from lora_ft.config import load_config
from lora_ft.data import load_data, read_dataset
from lora_ft.errors import UserError

from .conftest import REPO, write_jsonl


def _loaded(tmp_path, train_entries: str, extra: str = ""):
    path = tmp_path / "cfg.yaml"
    path.write_text(f"model:\n  base: embedded\ndata:\n  train:\n{train_entries}  eval_fraction: 0\n{extra}")
    return load_config(path)


def _read(tmp_path, filename: str, content: str | bytes, entry_extra: str = ""):
    target = tmp_path / filename
    if isinstance(content, bytes):
        target.write_bytes(content)
    else:
        target.write_text(content, encoding="utf-8")
    loaded = _loaded(tmp_path, f"    - path: {filename}\n{entry_extra}")
    return read_dataset(loaded.config.data.train[0], loaded, None)


def test_messages_format(tmp_path):
    rows = [{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Q1"},
                          {"role": "assistant", "content": "A1"}, {"role": "user", "content": "Q2"},
                          {"role": "assistant", "content": "A2"}]}]
    samples, report = _read(tmp_path, "chat.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    assert report.format == "messages" and report.kept == 1
    assert [m["role"] for m in samples[0].messages] == ["system", "user", "assistant", "user", "assistant"]
    assert samples[0].location.endswith("chat.jsonl:1")


def test_sharegpt_format_maps_roles(tmp_path):
    rows = [{"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]}]
    samples, report = _read(tmp_path, "sg.jsonl", json.dumps(rows[0]) + "\n")
    assert report.format == "sharegpt"
    assert samples[0].messages == [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]


def test_alpaca_format_joins_instruction_and_input(tmp_path):
    row = {"instruction": "Explain this clause.", "input": "Time is of the essence.", "output": "It means..."}
    samples, report = _read(tmp_path, "a.json", json.dumps([row, row], indent=2))
    assert report.format == "alpaca" and report.kept == 2
    assert samples[0].messages[0]["content"] == "Explain this clause.\n\nTime is of the essence."
    assert samples[1].location.endswith("a.json:7")  # line numbers inside a JSON array


def test_prompt_completion_format_plain_and_conversational(tmp_path):
    rows = [{"prompt": "2+2=", "completion": "4"},
            {"prompt": [{"role": "user", "content": "Hi"}], "completion": [{"role": "assistant", "content": "Yo"}]}]
    samples, report = _read(tmp_path, "pc.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    assert report.format == "prompt_completion" and report.kept == 2
    assert samples[0].messages[-1] == {"role": "assistant", "content": "4"}
    assert samples[1].messages[-1] == {"role": "assistant", "content": "Yo"}


def test_text_format(tmp_path):
    samples, report = _read(tmp_path, "t.jsonl", '{"text": "Raw legal text."}\n')
    assert report.format == "text" and samples[0].text == "Raw legal text."


def test_csv_with_column_mapping(tmp_path):
    content = 'question,answer\n"What is a tort?","A civil wrong."\n"Multi\nline?","Yes."\n'
    samples, report = _read(tmp_path, "qa.csv", content,
                            "      format: alpaca\n      columns: {instruction: question, output: answer}\n")
    assert report.kept == 2 and report.column_map == {"instruction": "question", "output": "answer"}
    assert samples[0].location.endswith("qa.csv:2"), "the first data row is line 2 (line 1 is the header)"
    assert samples[1].location.endswith("qa.csv:3")


def test_a_bad_first_csv_row_is_named_by_its_own_line_not_the_headers(tmp_path):
    _, report = _read(tmp_path, "qa.csv", "instruction,output\nQ1,A1,extra\nQ2,A2\n", "      format: alpaca\n")
    [(reason, [location])] = report.dropped.items()
    assert reason == "more fields than the header has columns" and location.endswith("qa.csv:2")


def test_a_folder_mixing_formats_names_the_files_and_their_formats(tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    write_jsonl(folder / "a.jsonl", [{"instruction": "Q", "output": "A"}] * 3)
    write_jsonl(folder / "b.jsonl", [{"messages": [{"role": "user", "content": "Q"},
                                                   {"role": "assistant", "content": "A"}]}] * 3)
    loaded = _loaded(tmp_path, "    - path: mixed\n")
    with pytest.raises(UserError) as caught:
        read_dataset(loaded.config.data.train[0], loaded, None)
    text = str(caught.value)
    assert "a.jsonl" in text and "alpaca" in text and "b.jsonl" in text and "messages" in text
    assert "max_dropped_fraction" not in text and "its own entry" in text


def test_parquet_and_directory(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "dir"
    folder.mkdir()
    pq.write_table(pa.table({"text": ["one", "two"]}), folder / "a.parquet")
    write_jsonl(folder / "b.jsonl", [{"text": "three"}])
    loaded = _loaded(tmp_path, "    - path: dir\n")
    samples, report = read_dataset(loaded.config.data.train[0], loaded, None)
    assert [s.text for s in samples] == ["one", "two", "three"]
    assert samples[1].location.endswith("a.parquet row 1")


def test_bom_and_crlf_are_read(tmp_path):
    content = '\ufeff{"text": "first"}\r\n{"text": "second"}\r\n'.encode()
    samples, report = _read(tmp_path, "bom.jsonl", content)
    assert [s.text for s in samples] == ["first", "second"] and report.dropped_count == 0


def test_bad_rows_are_named_by_file_and_line(tmp_path):
    lines = [
        json.dumps({"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]}),
        "{not json",
        json.dumps({"messages": [{"role": "user", "content": "Q"}, {"role": "robot", "content": "A"}]}),
        json.dumps({"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "  "}]}),
        json.dumps({"messages": [{"role": "user", "content": "Q"}, {"role": "user", "content": "Q again"}]}),
        json.dumps({"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": 5}]}),
        json.dumps({"messages": [{"role": "user"}, {"role": "assistant", "content": "A"}]}),
    ]
    samples, report = _read(tmp_path, "bad.jsonl", "\n".join(lines) + "\n")
    assert report.rows_read == 7 and report.kept == 1 and report.dropped_count == 6
    reasons = {reason: locs for reason, locs in report.dropped.items()}
    invalid = [locs for reason, locs in reasons.items() if reason.startswith("invalid JSON")]
    assert len(invalid) == 1 and invalid[0][0].endswith("bad.jsonl:2")
    assert reasons["unknown role 'robot' (use system, user, assistant or tool)"][0].endswith(":3")
    assert reasons["empty answer"][0].endswith(":4")
    assert reasons["two user turns in a row"][0].endswith(":5")
    assert any("not text" in r and locs[0].endswith(":6") for r, locs in reasons.items())
    assert reasons["'messages' item has no 'content' field"][0].endswith(":7")
    assert report.kept + report.dropped_count == report.rows_read


def test_alpaca_missing_field_and_empty_answer(tmp_path):
    rows = [{"instruction": "Q", "output": "A"}, {"instruction": "Q"}, {"instruction": "Q", "output": ""}]
    samples, report = _read(tmp_path, "a.jsonl", "".join(json.dumps(r) + "\n" for r in rows),
                            "      format: alpaca\n")
    assert report.dropped["missing field 'output'"][0].endswith(":2")
    assert report.dropped["empty answer"][0].endswith(":3")


def test_run_stops_when_too_much_is_dropped(tmp_path):
    write_jsonl(tmp_path / "t.jsonl", [{"instruction": "Q", "output": "A"}] + [{"instruction": "Q"}] * 3)
    loaded = _loaded(tmp_path, "    - path: t.jsonl\n")
    with pytest.raises(UserError) as exc:
        load_data(loaded)
    rendered = exc.value.render()
    assert "3 of 4 rows are unusable" in rendered and "t.jsonl:2" in rendered
    assert "max_dropped_fraction" in rendered


def test_run_stops_when_nothing_usable_remains(tmp_path):
    (tmp_path / "t.jsonl").write_text("{bad\n{worse\n")
    loaded = _loaded(tmp_path, "    - path: t.jsonl\n      format: text\n")
    with pytest.raises(UserError, match="no usable rows"):
        load_data(loaded)


def test_undetectable_format_explains_the_fix(tmp_path):
    write_jsonl(tmp_path / "t.jsonl", [{"q": "Q", "a": "A"}])
    loaded = _loaded(tmp_path, "    - path: t.jsonl\n")
    with pytest.raises(UserError) as exc:
        load_data(loaded)
    assert "cannot tell the data format" in exc.value.title and "columns" in exc.value.fix


def test_several_datasets_mix_and_eval_fraction_is_seeded(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [{"text": f"a{i}"} for i in range(10)])
    write_jsonl(tmp_path / "b.jsonl", [{"text": f"b{i}"} for i in range(10)])
    path = tmp_path / "cfg.yaml"
    path.write_text("data:\n  train:\n    - path: a.jsonl\n    - path: b.jsonl\n      max_samples: 5\n"
                    "  eval_fraction: 0.2\n")
    first = load_data(load_config(path))
    second = load_data(load_config(path))
    assert len(first.train) + len(first.eval) == 15 and len(first.eval) == 3
    assert [s.text for s in first.eval] == [s.text for s in second.eval]
    assert {s.text[0] for s in first.train + first.eval} == {"a", "b"}


def test_system_prompt_is_added_where_missing(tmp_path):
    write_jsonl(tmp_path / "t.jsonl", [{"instruction": "Q", "output": "A"}])
    loaded = _loaded(tmp_path, "    - path: t.jsonl\n", extra="  system_prompt: Be careful.\n")
    data = load_data(loaded)
    assert data.train[0].messages[0] == {"role": "system", "content": "Be careful."}


def test_invalid_json_array_file_names_line(tmp_path):
    (tmp_path / "broken.json").write_text('[\n  {"text": "a"},\n  {"text": \n]\n')
    loaded = _loaded(tmp_path, "    - path: broken.json\n")
    with pytest.raises(UserError) as exc:
        load_data(loaded)
    assert "broken.json:4" in exc.value.where


def _sft_examples():
    from lora_ft.formats import registry

    return sorted(p for p in (REPO / "data_templates" / "formats").iterdir()
                  if registry()[_format_of(p)].kind == "sft")


def _format_of(example) -> str:
    """An example's format: its name up to the first dot (messages.tools.jsonl is a `messages` example)."""
    return example.name.split(".")[0]


@pytest.mark.parametrize("example", _sft_examples(), ids=lambda p: p.name)  # preference ones: test_preference.py
def test_every_format_example_is_detected_and_clean(tmp_path, example):
    loaded = _loaded(tmp_path, f"    - path: {example}\n")
    samples, report = read_dataset(loaded.config.data.train[0], loaded, None)
    assert report.format == _format_of(example) and report.dropped_count == 0 and samples


def test_legal_sample_dataset_is_clean_and_large_enough():
    loaded = load_config(REPO / "configs" / "legal_domain.yaml")
    data = load_data(loaded)
    assert len(data.train) >= 300 and len(data.eval) >= 60
    assert all(r.dropped_count == 0 for r in data.reports)
    train_prompts = {s.messages[1]["content"] for s in data.train}
    assert not any(s.messages[1]["content"] in train_prompts for s in data.eval), "eval must be held out"
