"""Several processes: two CPU processes with the gloo backend train like one process with the same effective batch."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lora_ft import cli, distributed
from lora_ft.config import load_config

from .conftest import write_config

# Full-batch steps over 12 samples: one process with batch 12, or two processes with 6 each. Every step then sees
# every sample, so the runs compare the same gradients whatever order each process draws its share in. Plain SGD,
# because Adam turns gradients that differ only in float summation order into full +-lr updates wherever a
# gradient is near zero (as LoRA A's are while B is still near zero), which would hide what is being compared.
STEPS = ["--set", "train.max_steps=4", "--set", "train.save_steps=2", "--set", "lora.dropout=0.0",
         "--set", "train.optimizer=sgd", "--set", "train.learning_rate=0.5"]


def _adapter(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))


def _losses(run_dir: Path) -> list[float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if "loss" in r]


def test_two_gloo_processes_match_one_process_and_write_the_adapter_once(tiny_llama, legal_data, tmp_path):
    config = write_config(tmp_path / "run.yaml", tiny_llama, legal_data)
    single = tmp_path / "single"
    assert cli.main(["train", str(config), *STEPS, "--set", f"output_dir={single}",
                     "--set", "train.batch_size=12"]) == 0

    double = tmp_path / "double"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    result = subprocess.run(
        [sys.executable, "-m", "lora_ft", "train", str(config), *STEPS, "--set", f"output_dir={double}",
         "--set", "train.batch_size=6", "--nproc", "2"],
        capture_output=True, text=True, timeout=900, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "launching 2 processes" in out
    assert "effective batch 12 (6 x 1 accumulation x 2 processes, ddp)" in out
    assert out.count("== summary") == 1, "one process reports"

    # written once, by the main process: one adapter, one metrics file with one record per step
    assert len(list(double.rglob("adapter_model.safetensors"))) == 1 + 2  # the adapter and checkpoints 2 and 4
    assert len(_losses(double)) == 4
    manifest = json.loads((double / "manifest.json").read_text())
    assert manifest["metrics"]["steps"] == 4
    checkpoint = json.loads((double / "checkpoints" / "checkpoint-4" / "checkpoint.json").read_text())
    assert checkpoint["fingerprint"]["processes"] == 2
    assert {p.name for p in (double / "checkpoints" / "checkpoint-4").glob("rng_state*")} == {
        "rng_state_0.pth", "rng_state_1.pth"}

    # the same training: data split without overlap, gradients averaged over both halves of each batch
    assert _losses(double) == pytest.approx(_losses(single), rel=1e-4)
    ours, theirs = _adapter(double), _adapter(single)
    assert ours.keys() == theirs.keys()
    # Compared as a whole, per kind of LoRA matrix, within 10% of its norm (LoRA B, which starts at zero, differs
    # by about 5.5% after four steps, LoRA A far less). Not closer: each process averages the loss over its own
    # share's tokens before the gradients are averaged, where one process averages over all the batch's tokens,
    # so samples of unequal length weigh slightly differently; the logged losses agree to 1e-4.
    # a checkpoint of the two-process run resumes in one process (with the effective batch kept: batch 12)
    (double / "manifest.json").unlink()
    shutil.rmtree(double / "adapter")
    shutil.rmtree(double / "checkpoints" / "checkpoint-4")
    assert cli.main(["train", str(config), *STEPS, "--set", f"output_dir={double}", "--set", "train.batch_size=12",
                     "--force-resume"]) == 0
    assert json.loads((double / "manifest.json").read_text())["metrics"]["resumed_from_step"] == 2
    assert len(_losses(double)) == 4

    moved = 0
    for kind in ("lora_A", "lora_B"):
        keys = sorted(k for k in ours if kind in k)
        a = torch.cat([ours[k].flatten() for k in keys])
        b = torch.cat([theirs[k].flatten() for k in keys])
        assert (a - b).norm() <= 0.1 * b.norm(), (kind, float((a - b).norm() / b.norm()))
        moved += int(kind == "lora_B" and bool(b.abs().sum() > 0))
    assert moved, "the adapters trained (LoRA B starts at zero)"


def test_resume_on_another_number_of_processes(tiny_llama, legal_data, tmp_path, capsys):
    from lora_ft.rundir import checkpoints
    from lora_ft.rundir import resume

    config = write_config(tmp_path / "run.yaml", tiny_llama, legal_data)
    run_dir = tmp_path / "run"
    assert cli.main(["train", str(config), *STEPS]) == 0
    (run_dir / "manifest.json").unlink()
    checkpoint = checkpoints.verify(run_dir / "checkpoints" / "checkpoint-4")[0]
    start = resume.StartPoint(run_dir, checkpoint, existing=True)
    resume.check_same_processes(start, 1, "ddp", force=False)  # same number: nothing to say
    with pytest.raises(Exception, match="trained on 1 process"):
        resume.check_same_processes(start, 2, "ddp", force=False)
    resume.check_same_processes(start, 2, "ddp", force=True)
    assert start.forced_changes == ["processes: 1 -> 2 (the effective batch changes by 2x)"]
    with pytest.raises(Exception, match="FSDP checkpoints are sharded per process"):
        resume.check_same_processes(resume.StartPoint(run_dir, checkpoint), 2, "fsdp", force=True)


def test_strategy_settings_for_the_trainer():
    one = distributed.World()
    two = distributed.World(rank=1, local_rank=1, size=2)
    assert distributed.trainer_settings("ddp", "cuda", one, False) == {}
    ddp = distributed.trainer_settings("ddp", "cpu", two, False)
    assert ddp == {"ddp_backend": "gloo", "ddp_find_unused_parameters": False}
    fsdp = distributed.trainer_settings("fsdp", "cuda", two, True)
    assert fsdp["ddp_backend"] == "nccl" and fsdp["fsdp"] == "full_shard auto_wrap"
    # the trainer's gradient checkpointing, not FSDP's wrappers, whose module names PEFT's save cannot match
    assert fsdp["fsdp_config"]["activation_checkpointing"] is False and fsdp["fsdp_config"]["version"] == 2
    assert fsdp["fsdp_config"]["cpu_ram_efficient_loading"] is True and "accelerator_config" not in fsdp
    on_cpus = distributed.trainer_settings("fsdp", "cpu", two, False)
    assert on_cpus["ddp_backend"] == "gloo" and on_cpus["fsdp_config"]["cpu_ram_efficient_loading"] is False
    assert on_cpus["accelerator_config"] == {"use_configured_state": True}  # the state shard_cpu_processes set
    assert distributed.agree([True, False], one) == [True, False]


def test_fsdp_is_refused_where_it_cannot_run(tiny_llama, legal_data, tmp_path, monkeypatch):
    from lora_ft.config import resolution as settings
    from lora_ft.errors import UserError

    loaded = load_config(write_config(tmp_path / "run.yaml", tiny_llama, legal_data), ["distributed.strategy=fsdp"])
    cfg = settings.resolve(loaded).config
    distributed.check_supported(cfg, distributed.World())  # one process: the strategy does not apply
    distributed.check_supported(cfg, distributed.World(size=2))  # CPU processes shard too (tests/test_fsdp.py)
    cfg.model.quantization = "int8"
    with pytest.raises(UserError, match="8-bit weights cannot be sharded by FSDP"):
        distributed.check_supported(cfg, distributed.World(size=2))
    with pytest.raises(UserError, match=r"'distributed.strategy' = \"zero9\": Input should be 'ddp' or 'fsdp'"):
        load_config(write_config(tmp_path / "run.yaml", tiny_llama, legal_data), ["distributed.strategy=zero9"])


def test_nproc_flag_is_checked(tiny_llama, legal_data, tmp_path, capsys, monkeypatch):
    config = write_config(tmp_path / "run.yaml", tiny_llama, legal_data)
    assert cli.main(["train", str(config), "--nproc", "0"]) == 2
    assert "at least 1" in capsys.readouterr().err
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert cli.main(["train", str(config), "--nproc", "2"]) == 2
    assert "inside a launcher" in capsys.readouterr().err


def test_dpo_on_two_gloo_processes_matches_one_process(tiny_llama, preference_data, tmp_path):
    """Preference tuning under DDP: each process scores its share of the pairs (and its reference on them); the
    averaged gradients are the one-process run's, so the logged DPO losses agree."""
    config = write_config(tmp_path / "dpo.yaml", tiny_llama, preference_data)
    config.write_text("method: dpo\n" + config.read_text())
    single, double = tmp_path / "single", tmp_path / "double"
    assert cli.main(["train", str(config), *STEPS, "--set", f"output_dir={single}",
                     "--set", "train.batch_size=12"]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    result = subprocess.run(
        [sys.executable, "-m", "lora_ft", "train", str(config), *STEPS, "--set", f"output_dir={double}",
         "--set", "train.batch_size=6", "--nproc", "2"],
        capture_output=True, text=True, timeout=900, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.count("== summary") == 1
    assert len(_losses(double)) == 4 and _losses(double)[-1] < _losses(double)[0]
    # the same loss up to float summation order (with SGD at lr 0.5, 1e-4 apart after a step)
    assert _losses(double) == pytest.approx(_losses(single), rel=1e-3)
    assert json.loads((double / "manifest.json").read_text())["metrics"]["method"] == "dpo"
