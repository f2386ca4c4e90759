"""`lora-ft train CONFIG --nproc N`: a config fault is told once before any process starts; a process's failure
reaches the user as that process's own one-screen message, once, with its exit code, never torchrun's traceback."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from lora_ft import launching
from lora_ft.rundir import checkpoints

from .conftest import legal_rows, run_cli, write_config, write_jsonl

REPO = Path(__file__).resolve().parent.parent


def _env() -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    env.pop(launching.FAILURE_DIR, None)
    return env


def _train(config: Path, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lora_ft", "train", str(config), *args, "--nproc", "2"],
                          capture_output=True, text=True, timeout=timeout, env=_env())


def test_a_config_fault_is_told_once_before_any_process_starts(tiny_llama, legal_data, tmp_path, capsys):
    config = write_config(tmp_path / "run.yaml", tiny_llama, legal_data)
    started = time.monotonic()
    code, out, err = run_cli(capsys, ["train", str(config), "--set", "distributed.strategy=fsdp",
                                      "--set", "train.optimizer=adamw_8bit", "--nproc", "2"])
    assert code == 2 and "launching" not in out
    assert err.count("error:") == 1 and "adamw_8bit fails on FSDP's sharded (DTensor) parameters" in err
    assert time.monotonic() - started < 30 and not (tmp_path / "run").exists()


def test_several_machines_need_a_meeting_point(tiny_llama, legal_data, tmp_path, capsys):
    config = write_config(tmp_path / "run.yaml", tiny_llama, legal_data)
    code, out, err = run_cli(capsys, ["train", str(config), "--nnodes", "2"])
    assert code == 2 and "--nnodes 2 needs the address where the machines meet" in err and "launching" not in out


def test_a_fault_in_the_processes_is_told_once_with_its_exit_code(tiny_llama, tmp_path):
    """Every process reads the data and finds nothing to train on: the user reads it once, exit code 2."""
    data = tmp_path / "data"
    data.mkdir()
    write_jsonl(data / "train.jsonl", [dict(row, output="") for row in legal_rows(6)])
    write_jsonl(data / "eval.jsonl", legal_rows(2))
    result = _train(write_config(tmp_path / "run.yaml", tiny_llama, data))
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-3000:]
    assert "launching 2 processes" in result.stdout
    assert result.stderr.count("error: the data is not usable") == 1, result.stderr
    assert "Traceback" not in result.stderr and "ChildFailedError" not in result.stderr


def test_sigterm_to_the_launcher_saves_and_exits_143(tiny_llama, legal_data, tmp_path):
    """Slurm's or a user's SIGTERM to the launcher reaches every process; they save, and the user reads the first
    process's message (what it saved) once, exit code 143."""
    config = write_config(tmp_path / "run.yaml", tiny_llama, legal_data)
    run_dir = tmp_path / "run"
    launcher = _long_run(config, run_dir)
    try:
        launcher.send_signal(signal.SIGTERM)
        out, err = launcher.communicate(timeout=90)
    finally:
        _stop(launcher)
    assert launcher.returncode == 143, out[-2000:] + err[-3000:]
    assert err.count("stopped: SIGTERM received") == 1 and "Traceback" not in err, err
    saved = checkpoints.newest(run_dir / "checkpoints", tidy=False)
    assert saved is not None and checkpoints.verify(saved.path)[0] is not None
    assert f"checkpoint {saved.path} is complete" in err, "the first process's report: it saved"
    assert "--nproc 2" in err.split("run the same command to resume from there:", 1)[1], "the hint keeps --nproc"


def _long_run(config: Path, run_dir: Path) -> subprocess.Popen:
    """Two processes training until stopped; returns once a checkpoint is complete."""
    launcher = subprocess.Popen(
        [sys.executable, "-m", "lora_ft", "train", str(config), "--set", "train.max_steps=100000",
         "--set", "train.save_steps=2", "--set", "train.eval_steps=100000", "--nproc", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    deadline = time.monotonic() + 150
    while checkpoints.newest(run_dir / "checkpoints", tidy=False) is None and launcher.poll() is None:
        if time.monotonic() > deadline:
            _stop(launcher)
            raise AssertionError("no checkpoint was written")
        time.sleep(0.3)
    return launcher


def _stop(launcher: subprocess.Popen) -> None:
    if launcher.poll() is None:
        for child in psutil.Process(launcher.pid).children(recursive=True):
            child.kill()
        launcher.kill()


def test_a_killed_process_is_named_with_its_signal(tiny_llama, legal_data, tmp_path):
    """SIGKILL (the out-of-memory killer) leaves no report: the launcher names the process and the signal, stops
    the other, and exits 128 + 9; the checkpoints written stay whole."""
    run_dir = tmp_path / "run"
    launcher = _long_run(write_config(tmp_path / "run.yaml", tiny_llama, legal_data), run_dir)
    try:
        [worker] = [p for p in psutil.Process(launcher.pid).children() if p.environ().get("RANK") == "1"]
        worker.kill()
        out, err = launcher.communicate(timeout=90)
    finally:
        _stop(launcher)
    assert launcher.returncode == 137, out[-2000:] + err[-3000:]
    assert err.count("error: process 1 was killed by SIGKILL") == 1 and "Traceback" not in err, err
    saved = checkpoints.newest(run_dir / "checkpoints", tidy=False)
    assert saved is not None and checkpoints.verify(saved.path)[0] is not None


def test_the_cause_is_told_before_its_consequences(tmp_path):
    """Reports of the processes the agent found failed: a process's own fault before a lost peer; a process that
    died without a report (SIGKILL) before the one that lost it; after a signal to the launcher, the first
    process's report (it knows what it saved)."""
    def report(rank: int, text: str, code: int, at: float) -> None:
        (tmp_path / f"rank-{rank}.json").write_text(json.dumps({"text": text, "exit_code": code, "time": at}))

    report(0, f"error: {launching.PEERS_LOST} (Connection reset by peer)", 1, 1.0)
    killed = launching._first_failure(tmp_path, {0: 1, 1: -9})
    assert killed.exit_code == 137 and "process 1 was killed by SIGKILL" in killed.render()
    report(1, "error: the data is not usable", 2, 2.0)
    own = launching._first_failure(tmp_path, {0: 1, 1: 2})
    assert own.exit_code == 2 and own.render() == "error: the data is not usable"
    assert launching._first_failure(tmp_path, {0: 1}).exit_code == 1  # only the lost peer failed
    lost = launching.ProcessFailed("error: lost the meeting point", 1)  # the agent failed, not a process
    assert launching._first_failure(tmp_path / "none", {}, everyone=True, otherwise=lost) is lost
    assert launching._first_failure(tmp_path, {}, everyone=True, otherwise=lost).exit_code == 2  # a report first
    report(0, "stopped: SIGTERM; checkpoint 4 is complete", 143, 3.0)  # the first process saved: written last
    report(1, "stopped: SIGTERM; no checkpoint could be saved", 143, 2.5)
    assert launching._first_failure(tmp_path, {}, signum=15).render() == "stopped: SIGTERM; checkpoint 4 is complete"
