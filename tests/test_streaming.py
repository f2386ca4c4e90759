"""data.streaming: the training rows read as training takes them: the same losses as a tokenized run on the same
data, bad rows counted as they are met, and a resume that goes on from the exact row."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lora_ft import cli
from lora_ft.config import load_config
from lora_ft.errors import UserError

from .conftest import legal_rows, write_config, write_jsonl

CRASH_RUN = Path(__file__).with_name("crash_run.py")


def _history(run_dir: Path) -> list[tuple]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"], r["grad_norm"]) for r in records if "loss" in r]


def _eval_losses(run_dir: Path) -> list[float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["eval_loss"] for r in records if "eval_loss" in r]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("stream")
    data_dir = root / "data"
    data_dir.mkdir()
    rows = legal_rows(12)
    rows.insert(4, {"instruction": "unanswered", "output": ""})  # a bad row, met as the stream reads it
    write_jsonl(data_dir / "train.jsonl", rows)
    write_jsonl(data_dir / "eval.jsonl", legal_rows(4, offset=100))
    return root, data_dir


def test_streamed_and_tokenized_runs_give_the_same_losses(tiny_llama, data, tmp_path, capsys):
    root, data_dir = data
    config = write_config(tmp_path / "run.yaml", tiny_llama, data_dir)
    # one batch holds every row: the step's loss does not depend on the order the rows come in
    common = ["--set", "train.batch_size=12", "--set", "train.max_steps=3", "--set", "train.eval_steps=1"]
    assert cli.main(["train", str(config), *common, "--set", f"output_dir={tmp_path / 'tokenized'}"]) == 0
    capsys.readouterr()
    assert cli.main(["train", str(config), *common, "--set", "data.streaming=true",
                     "--set", f"output_dir={tmp_path / 'streamed'}"]) == 0
    out = capsys.readouterr().out
    assert "train: streamed" in out and "streamed samples" in out
    assert "13 rows read, 12 kept, 1 dropped" in out and "empty answer" in out  # counted as it was met
    tokenized, streamed = _history(tmp_path / "tokenized"), _history(tmp_path / "streamed")
    assert len(streamed) == len(tokenized) == 3
    for (step, loss, norm), (step2, loss2, norm2) in zip(tokenized, streamed, strict=True):
        assert step == step2 and loss == pytest.approx(loss2, abs=1e-4) and norm == pytest.approx(norm2, rel=1e-3)
    assert _eval_losses(tmp_path / "streamed") == pytest.approx(_eval_losses(tmp_path / "tokenized"), abs=1e-4)
    manifest = json.loads((tmp_path / "streamed" / "manifest.json").read_text())
    assert manifest["tokenized_data"]["streamed"] and manifest["data"][0]["kept"] == 12


def test_a_streamed_run_killed_mid_way_resumes_at_the_exact_row(tiny_llama, data, tmp_path):
    root, data_dir = data
    config = write_config(tmp_path / "run.yaml", tiny_llama, data_dir)
    # batch 2 over 12 rows: each step trains other rows, and 8 steps run into a second pass over the data
    run = ["--set", "data.streaming=true", "--set", "train.max_steps=8", "--set", "train.save_steps=2",
           "--set", "lora.dropout=0.1"]
    reference = tmp_path / "reference"
    assert cli.main(["train", str(config), *run, "--set", f"output_dir={reference}"]) == 0
    run_dir = tmp_path / "run"
    killed = subprocess.run([sys.executable, str(CRASH_RUN), "step:6", str(config), *run,
                             "--set", f"output_dir={run_dir}"], capture_output=True, text=True, timeout=900)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    resumed = subprocess.run([sys.executable, str(CRASH_RUN), "none", str(config), *run,
                              "--set", f"output_dir={run_dir}"], capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "from checkpoint-4 (step 4)" in resumed.stdout
    assert _history(run_dir) == _history(reference)
    # `lora-ft eval` of a streamed run reads its eval files alone, tokenized as in training
    from lora_ft.evaluation.run import prepared_eval
    from lora_ft.rundir.finished import open_run

    prepared, source = prepared_eval(open_run(reference), None)
    assert prepared.is_streamed and source == "4 rows from data.eval" and len(prepared.data.eval) == 4
    ours = load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))
    theirs = load_file(str(reference / "adapter" / "adapter_model.safetensors"))
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_streaming_needs_max_steps_and_sft(tiny_llama, data, tmp_path):
    root, data_dir = data
    config = write_config(tmp_path / "run.yaml", tiny_llama, data_dir)
    with pytest.raises(UserError) as caught:
        load_config(config, ["data.streaming=true", "train.max_steps=null"])
    assert "train.max_steps" in caught.value.render()
    with pytest.raises(UserError) as caught:
        load_config(config, ["data.streaming=true", "data.eval_fraction=0.1"])
    assert "cannot hold rows out" in caught.value.render()


def test_a_stream_with_too_many_bad_rows_stops_and_names_them(tiny_llama, tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    rows = legal_rows(1500)
    for index in range(0, 1500, 3):
        rows[index] = {"instruction": f"q{index}", "output": ""}
    write_jsonl(data_dir / "train.jsonl", rows)
    config = write_config(tmp_path / "run.yaml", tiny_llama, data_dir, eval_file=None)
    from lora_ft.commands.train import train

    with pytest.raises(UserError) as caught:
        train(load_config(config, ["data.streaming=true", "train.max_steps=2000"]))
    assert "rows are unusable" in caught.value.render() and "empty answer" in caught.value.render()
