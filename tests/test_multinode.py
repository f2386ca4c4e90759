"""Several machines, played on this one: two torchrun launchers with one CPU process each meet through a c10d
rendezvous, the same command as on two hosts (docs/distributed.md). They train one adapter; when one process dies
or freezes, every process stops with a message, not a hang, and the checkpoints written stay resumable."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from lora_ft.rundir import checkpoints

from .conftest import write_config

REPO = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _nodes(config: Path, tmp_path: Path, *overrides: str) -> list[subprocess.Popen]:
    """Two launchers, each the command one host of two would run."""
    port, env = _free_port(), {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    env.pop("LORA_FT_FAILURE_DIR", None)
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
               "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", f"test-{port}",
               "-m", "lora_ft", "train", str(config), *(a for o in overrides for a in ("--set", o))]
    return [subprocess.Popen(command, stdout=open(tmp_path / f"node{n}.out", "w"),
                             stderr=open(tmp_path / f"node{n}.err", "w"), env=env, cwd=tmp_path) for n in (0, 1)]


def _wait(nodes: list[subprocess.Popen], seconds: float) -> list[int]:
    deadline = time.monotonic() + seconds
    try:
        return [node.wait(timeout=max(1.0, deadline - time.monotonic())) for node in nodes]
    finally:
        for node in nodes:
            if node.poll() is None:
                for child in psutil.Process(node.pid).children(recursive=True):
                    child.kill()
                node.kill()


def _output(tmp_path: Path, n: int) -> str:
    return (tmp_path / f"node{n}.out").read_text() + (tmp_path / f"node{n}.err").read_text()


def _worker(node: subprocess.Popen) -> psutil.Process:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        children = psutil.Process(node.pid).children()
        if children:
            return children[0]
        time.sleep(0.2)
    raise AssertionError("the launcher started no process")


def _wait_for_checkpoint(run_dir: Path, nodes: list[subprocess.Popen], tmp_path: Path, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if checkpoints.newest(run_dir / "checkpoints", tidy=False) is not None:
            return
        if any(node.poll() is not None for node in nodes):
            break
        time.sleep(0.3)
    _wait(nodes, 1)
    raise AssertionError("no checkpoint was written:\n" + _output(tmp_path, 0)[-3000:] + _output(tmp_path, 1)[-2000:])


def test_two_nodes_train_one_adapter(tiny_llama, legal_data, tmp_path):
    config = write_config(tmp_path / "run.yaml", tiny_llama, legal_data)
    run_dir = tmp_path / "run"
    assert _wait(_nodes(config, tmp_path, "train.save_steps=2"), 240) == [0, 0], \
        _output(tmp_path, 0)[-3000:] + _output(tmp_path, 1)[-3000:]
    outputs = _output(tmp_path, 0) + _output(tmp_path, 1)
    assert "effective batch 4 (2 x 1 accumulation x 2 processes, ddp)" in outputs
    assert outputs.count("== summary") == 1, "the first process reports"
    adapters = [p for p in run_dir.rglob("adapter_model.safetensors") if "checkpoints" not in p.parts]
    assert adapters == [run_dir / "adapter" / "adapter_model.safetensors"]
    assert json.loads((run_dir / "manifest.json").read_text())["metrics"]["steps"] == 3
    checkpoint = checkpoints.newest(run_dir / "checkpoints", tidy=False)
    assert checkpoint is not None and checkpoint.fingerprint["processes"] == 2


@pytest.mark.parametrize("how", ["killed", "frozen"])
def test_a_lost_process_stops_every_node_with_a_message(tiny_llama, legal_data, tmp_path, how):
    """SIGKILL: the dead process's connections close and the other's collective fails at once. SIGSTOP (a frozen
    process or machine, connections left open): the other waits distributed.timeout_minutes (here 12 s), then
    stops. Either way, with a message that says where the run resumes from, and the checkpoint written is whole."""
    config = write_config(tmp_path / "run.yaml", tiny_llama, legal_data)
    run_dir = tmp_path / "run"
    nodes = _nodes(config, tmp_path, "train.max_steps=100000", "train.save_steps=2", "train.eval_steps=100000",
                   "distributed.timeout_minutes=0.2")
    _wait_for_checkpoint(run_dir, nodes, tmp_path)
    worker = _worker(nodes[1])
    worker.send_signal(signal.SIGKILL if how == "killed" else signal.SIGSTOP)
    started = time.monotonic()
    try:
        first = nodes[0].wait(timeout=90)
    finally:
        if how == "frozen":
            worker.kill()
    waited = time.monotonic() - started
    codes = [first, *_wait(nodes[1:], 60)]
    out = _output(tmp_path, 0)
    assert codes[0] != 0 and codes[1] != 0
    assert "another process of this run stopped or stopped answering" in out, out[-3000:]
    assert "it resumes from checkpoint-" in out
    if how == "frozen":
        assert waited >= 10, "the first process waited for the timeout"
    newest = checkpoints.newest(run_dir / "checkpoints", tidy=False)
    assert newest is not None and checkpoints.verify(newest.path)[0] is not None


def test_lora_ft_launches_each_node_and_tells_a_lost_process_once(tiny_llama, legal_data, tmp_path):
    """`lora-ft train CONFIG --nnodes 2 --nproc 1 --rdzv-endpoint HOST:PORT` on each machine: the same run, and a
    failure told as one message per machine with its exit code, never torchrun's traceback."""
    config = write_config(tmp_path / "run.yaml", tiny_llama, legal_data)
    run_dir, port = tmp_path / "run", _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "lora_ft", "train", str(config), "--set", "train.max_steps=100000",
               "--set", "train.save_steps=2", "--set", "train.eval_steps=100000",
               "--set", "distributed.timeout_minutes=0.2",
               "--nnodes", "2", "--nproc", "1", "--rdzv-endpoint", f"127.0.0.1:{port}"]
    nodes = [subprocess.Popen(command, stdout=open(tmp_path / f"node{n}.out", "w"),
                              stderr=open(tmp_path / f"node{n}.err", "w"), env=env, cwd=tmp_path) for n in (0, 1)]
    _wait_for_checkpoint(run_dir, nodes, tmp_path)
    victim = next(node for node in nodes if _worker(node).environ().get("RANK") == "1")
    _worker(victim).kill()
    codes = _wait(nodes, 90)
    errors = [(tmp_path / f"node{n}.err").read_text() for n in (0, 1)]
    lost, killed = (errors[1], errors[0]) if victim is nodes[0] else (errors[0], errors[1])
    assert sorted(codes) == [1, 137], codes
    assert killed.count("error: process 1 was killed by SIGKILL") == 1, killed[-2000:]
    assert lost.count("another process of this run stopped or stopped answering") == 1, lost[-2000:]
    assert "it resumes from checkpoint-" in lost
    for text in errors:
        assert "Traceback" not in text and "ChildFailedError" not in text
