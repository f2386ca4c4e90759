"""lora-ft ui's parts without a browser: the runs index read from real run directories, the files it may serve,
the new-run form read from the schema and checked as `lora-ft validate` checks, training started, stopped (SIGTERM:
a checkpoint) and resumed as the CLI does, and the address rules. The page itself: tests/test_ui_browser.py."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml

from lora_ft import cli
from lora_ft.commands import ui as ui_command
from lora_ft.errors import UserError
from lora_ft.rundir import checkpoints
from lora_ft.ui import curves, jobs, run_form, runs_index, served_files
from lora_ft.ui.pages import RUN_PAGE_PARTS, Pages, failure_text
from tests.conftest import run_cli, write_config


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_llama):
    """A runs folder with one finished tiny run (3 steps, eval before and after)."""
    from tests.conftest import legal_rows, write_jsonl

    root = tmp_path_factory.mktemp("ui-runs")
    data = root.parent / f"{root.name}-data"
    data.mkdir()
    write_jsonl(data / "train.jsonl", legal_rows(12))
    write_jsonl(data / "eval.jsonl", legal_rows(4, offset=100))
    config = write_config(data / "tiny.yaml", tiny_llama, data, output_dir=root / "tiny")
    assert cli.main(["train", str(config)]) == 0
    return root, root / "tiny", data


def test_the_index_lists_a_finished_run_with_its_figures(finished_run):
    runs_dir, run_dir, _ = finished_run
    (runs_dir / "notes").mkdir(exist_ok=True)  # a folder that is no run is not listed
    (runs_dir / ".lora-ft-ui").mkdir(exist_ok=True)
    (summary,) = runs_index.list_runs(runs_dir)
    manifest = json.loads((run_dir / "manifest.json").read_text())["metrics"]
    assert (summary.name, summary.status, summary.method, summary.data) == ("tiny", "finished", "sft", "train.jsonl")
    assert (summary.step, summary.total_steps) == (3, 3)
    assert summary.eval_before == manifest["eval_loss_before"] and summary.eval_after == manifest["eval_loss_after"]
    assert summary.row()[-1] == "(not evaluated)"
    frames = curves.run_frames(summary)
    assert list(frames["loss"]["step"]) == [1, 2, 3]
    assert list(frames["eval_loss"]["step"]) == [0, 3]
    empty = curves.frame({"starting": []}, "loss")  # a run with nothing logged yet: numbers all the same
    assert (str(empty["step"].dtype), str(empty["value"].dtype)) == ("int64", "float64")


def test_an_interrupted_run_shows_its_checkpoint_and_a_live_one_its_holder(finished_run, tmp_path):
    import shutil
    import subprocess
    import sys

    runs_dir, run_dir, _ = finished_run
    copy = tmp_path / "runs" / "cut"
    shutil.copytree(run_dir, copy)
    (copy / "manifest.json").unlink()
    (copy / "checkpoints" / "checkpoint-3" / "checkpoint.json").unlink()  # the last save was cut short
    committed, _ = checkpoints.scan_names(copy / "checkpoints")
    assert committed, "the tiny run keeps an earlier checkpoint"
    summary = runs_index.summarize(copy, tmp_path / "runs")
    assert (summary.status, summary.checkpoint) == (runs_index.INTERRUPTED, committed[-1].name)
    assert summary.status_text == f"interrupted at {committed[-1].name}"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        import socket

        (copy / ".lora-ft.lock").write_text(json.dumps({"pid": sleeper.pid, "host": socket.gethostname(),
                                                          "command": "lora-ft train x.yaml", "since": "now"}))
        live = runs_index.summarize(copy, tmp_path / "runs")
        assert live.status == runs_index.RUNNING and live.status_text == f"running (pid {sleeper.pid})"
    finally:
        sleeper.kill()
        sleeper.wait()
    assert runs_index.summarize(copy, tmp_path / "runs").status != runs_index.RUNNING  # its process ended


def test_a_runs_page_holds_its_config_curves_card_and_downloads_and_its_data_report(finished_run):
    runs_dir, run_dir, _ = finished_run
    pages = Pages(runs_dir)
    shown = pages.run_page("tiny")
    assert "finished" in shown["status"] and shown["config"] == (run_dir / "config.yaml").read_text()
    assert list(shown["learning_rate"]["step"]) == [1, 2, 3] and set(shown) == set(RUN_PAGE_PARTS)
    assert shown["card"] == (run_dir / "adapter" / "README.md").read_text()
    assert "adapter/adapter_model.safetensors" in shown["downloads"] and shown["answers"] == []
    assert "lora-ft eval" in shown["eval_report"]  # says how to get one
    report = pages.data_report("tiny")
    assert "train.jsonl" in report and "12" in report and "\x1b[" not in report  # lora-ft data's text, no colour


def test_only_files_inside_the_runs_folder_get_links(finished_run, tmp_path):
    runs_dir, run_dir, data = finished_run
    assert served_files.inside(runs_dir, run_dir / "adapter" / "adapter_config.json") is not None
    assert served_files.inside(runs_dir, runs_dir / ".." / data.name / "train.jsonl") is None
    assert served_files.url_for(runs_dir, data / "train.jsonl") is None
    outside = tmp_path / "secret.txt"
    outside.write_text("not yours")
    link = run_dir / "adapter" / "escape.txt"
    link.symlink_to(outside)
    try:
        assert served_files.url_for(runs_dir, link) is None  # a symlink out of the folder is outside
        labels = [d.label for d in served_files.downloads(runs_dir, run_dir)]
    finally:
        link.unlink()
    assert "adapter/adapter_model.safetensors" in labels and "adapter/escape.txt" not in labels
    with pytest.raises(UserError, match="no run called"):
        Pages(runs_dir).summary("../" + data.name)


def test_the_form_is_read_from_the_schema():
    fields = {f.key: f for f in run_form.form_fields()}
    assert fields["method"].kind == "choice" and {"sft", "dpo", "orpo", "kto", "grpo"} <= set(fields["method"].choices)
    assert fields["model.quantization"].choices == ("auto", "nf4", "int8", "none")
    assert (fields["train.learning_rate"].kind, fields["train.learning_rate"].default) == ("float", 2e-4)
    assert (fields["lora.r"].kind, fields["lora.r"].default) == ("int", 16)
    assert fields["train.max_steps"].optional and fields["data.eval.0.path"].optional
    assert fields["data.train.0.path"].info.startswith("A .jsonl")


def _form(data: Path, model: Path, **changes) -> dict:
    values = {f.key: f.default for f in run_form.form_fields()}
    values.update({"model.base": str(model), "data.train.0.path": "train.jsonl", "data.eval.0.path": "",
                   "train.max_steps": 3.0, "train.batch_size": 2.0, "data.max_seq_length": 128.0}, **changes)
    return values


def test_a_form_config_error_reads_as_lora_ft_validate_says_it(tmp_path, tiny_llama, legal_data, capsys):
    pages = Pages(tmp_path / "runs", here=legal_data)  # paths typed in the form are read from where the page started
    values = _form(legal_data, tiny_llama, **{"train.learning_rate": 5.0})
    name, config = pages.form_config("bad-lr", values, "lora.dropout=2\n# a comment line")
    written = yaml.safe_load(config.read_text())
    assert written["data"]["train"] == [{"path": str(legal_data / "train.jsonl")}] and "eval" not in written["data"]
    assert written["output_dir"] == str(pages.runs_dir / "bad-lr") and written["train"]["max_steps"] == 3
    ok, shown = run_form.validate(config)
    code, _, err = run_cli(capsys, ["validate", str(config)])
    assert not ok and code == 2 and shown == err.strip()
    assert "train.learning_rate" in shown and "lora.dropout" in shown and f"{config}:" in shown
    assert "Traceback" not in failure_text(UserError("x", fix="y"))


def test_a_run_started_here_stops_with_a_checkpoint_and_resumes_to_the_end(tmp_path, tiny_llama, legal_data):
    pages = Pages(tmp_path / "runs", here=legal_data)
    values = _form(legal_data, tiny_llama, **{"train.max_steps": 400.0})
    name, config = pages.form_config("long", values, "train.logging_steps=1\ntrain.save_steps=1000")
    assert pages.start(name, config).startswith("started: lora-ft train")
    run_dir = pages.runs_dir / name
    deadline = time.time() + 180
    while time.time() < deadline and max((r["step"] for r in runs_index.read_metrics(run_dir)), default=0) < 3:
        assert pages.jobs.get(name).running, jobs.log_tail(pages.jobs.get(name).log)
        time.sleep(0.2)
    assert runs_index.summarize(run_dir, pages.runs_dir).status == runs_index.RUNNING
    assert pages.stop(name).startswith("sent SIGTERM to long")
    assert pages.jobs.get(name).process.wait(120) == 143
    stopped = runs_index.summarize(run_dir, pages.runs_dir)
    assert stopped.status == runs_index.INTERRUPTED and stopped.checkpoint.startswith("checkpoint-")
    assert 3 <= int(stopped.checkpoint.split("-")[1]) < 400
    assert "after saving a checkpoint" in pages.jobs.get(name).outcome()
    assert "\nstopped: " in jobs.log_tail(jobs.log_path(pages.runs_dir, name))  # the CLI's line, in the page's log
    assert pages.resume(name).startswith("resumed: lora-ft train")
    assert pages.jobs.get(name).process.wait(300) == 0, jobs.log_tail(pages.jobs.get(name).log)
    done = runs_index.summarize(run_dir, pages.runs_dir)
    assert done.status == runs_index.FINISHED and done.step == 400
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()
    assert "step 400/400 " in jobs.log_path(pages.runs_dir, name).read_text()
    with pytest.raises(UserError, match="has finished"):
        pages.resume(name)


def test_another_address_needs_a_password(monkeypatch):
    monkeypatch.delenv(ui_command.PASSWORD_ENV, raising=False)
    assert ui_command.credentials("127.0.0.1", "lora-ft") is None
    assert ui_command.credentials("::1", "lora-ft") is None
    with pytest.raises(UserError, match="no password is set"):
        ui_command.credentials("0.0.0.0", "lora-ft")
    monkeypatch.setenv(ui_command.PASSWORD_ENV, "short")
    with pytest.raises(UserError, match="shorter than 8"):
        ui_command.credentials("192.168.1.5", "lora-ft")
    monkeypatch.setenv(ui_command.PASSWORD_ENV, "a long secret")
    assert ui_command.credentials("0.0.0.0", "me") == ("me", "a long secret")


def test_ui_refuses_an_open_address_without_a_password_before_serving(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(ui_command.PASSWORD_ENV, raising=False)
    code, out, err = run_cli(capsys, ["ui", str(tmp_path / "runs"), "--host", "0.0.0.0"])
    assert code == 2 and "LORA_FT_UI_PASSWORD" in err and "127.0.0.1" in err and not out


def test_chat_streams_the_base_and_tuned_answers_each_as_alone(finished_run):
    """Both answers come from one batch (the base's row without the adapter) and are, greedy, each model's
    answer to its own conversation alone, as `lora-ft chat` would give it."""
    from lora_ft import inference
    from lora_ft.ui.chat_pair import ChatModels, answer_pair

    _, run_dir, _ = finished_run
    loaded = ChatModels().load(run_dir)
    asked = {"role": "user", "content": "What is consideration in contract 7?"}
    earlier = [{"role": "user", "content": "What is consideration in contract 3?"},
               {"role": "assistant", "content": "Consideration is something of value."}]
    for base_history, tuned_history in (([], []), (earlier, [])):
        steps = list(answer_pair(loaded, base_history, tuned_history, asked["content"], max_new_tokens=12))
        base, tuned, _ = steps[-1]
        with loaded.model.disable_adapter():
            alone_base, _ = inference.generate(loaded.model, loaded.tokenizer, loaded.run, [*base_history, asked], 12)
        alone_tuned, _ = inference.generate(loaded.model, loaded.tokenizer, loaded.run, [*tuned_history, asked], 12)
        assert (base, tuned) == (alone_base, alone_tuned)
    assert tuned and base != tuned  # the tiny model: the tuned one answers, the untrained base gives no text
    assert len({t for _, t, _ in steps}) > 2  # streamed: the tuned answer grew over several updates


def test_chat_offers_the_tools_a_run_trained_with(tmp_path, tiny_llama, legal_data):
    """A run trained on conversations with tools answers the page's chat with those tools in its prompt; a run
    trained on plain instructions is offered none."""
    from dataclasses import replace

    from lora_ft.ui import chat_pair
    from lora_ft.ui.chat_pair import ChatModels, data_tools
    from tests.conftest import write_jsonl
    from tests.test_tool_data import STATUTE, _openai_row

    import shutil

    model = tmp_path / "model"  # the tiny model with a longer context: its byte-level tokens spell the tool list
    shutil.copytree(tiny_llama, model)
    shape = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**shape, "max_position_embeddings": 4096}))
    data = tmp_path / "agent-data"
    data.mkdir()
    write_jsonl(data / "train.jsonl", [_openai_row() for _ in range(4)])
    config = write_config(tmp_path / "tools.yaml", model, data, eval_file=None,
                          output_dir=tmp_path / "runs" / "agent")
    assert cli.main(["train", str(config), "--set", "train.max_steps=1", "--set", "data.max_seq_length=2048"]) == 0
    loaded = ChatModels().load(tmp_path / "runs" / "agent")
    assert [tool["function"]["name"] for tool in loaded.tools] == ["get_statute", "compute_deadline"]
    assert loaded.tools[0] == STATUTE
    answer = '<think>UCC first.</think>Looking.<tool_call>{"name": "get_statute", "arguments": {"code": "UCC"}}'
    assert chat_pair.shown(answer, loaded.tools) == ('*thinking:* UCC first.\n\nLooking.\n\n'
                                                     '`call: get_statute({"code": "UCC"})`')
    assert chat_pair.shown(answer, None) == answer  # a run without tools shows the text as written
    plain = loaded.run.config.model_copy(deep=True)
    plain.data.train[0].path = str(legal_data / "train.jsonl")
    assert data_tools(replace(loaded.run, config=plain)) is None
