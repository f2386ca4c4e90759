"""FSDP2 on two CPU processes (gloo), through the trainer's and Accelerate's own FSDP code, as a GPU run takes it:
`lora-ft train CONFIG --nproc 2` with `distributed.strategy: fsdp`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lora_ft import cli

from .conftest import preference_rows, write_config, write_jsonl

REPO = Path(__file__).resolve().parent.parent
# The same steps as tests/test_distributed.py: full-batch plain-SGD steps over 12 samples (two processes of 6), so
# DDP and FSDP see the same gradients and differ only in how the collectives sum them.
STEPS = ["--set", "train.max_steps=4", "--set", "train.save_steps=2", "--set", "lora.dropout=0.0",
         "--set", "train.optimizer=sgd", "--set", "train.learning_rate=0.5", "--set", "train.batch_size=6"]
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")  # all-linear, no head
LAYERS = 3  # conftest's tiny_llama


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def _train(config: Path, run_dir: Path, strategy: str, *extra: str, timeout: int = 900):
    return subprocess.run(
        [sys.executable, "-m", "lora_ft", "train", str(config), *STEPS, "--set", f"output_dir={run_dir}",
         "--set", f"distributed.strategy={strategy}", *extra, "--nproc", "2"],
        capture_output=True, text=True, timeout=timeout, env=_env())


def _adapter(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))


def _losses(run_dir: Path) -> list[float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if "loss" in r]


def _assert_sharded_checkpoint(run_dir: Path, step: int) -> None:
    """FSDP really ran (Accelerate falls back to DDP silently where it does not): the checkpoint holds FSDP's
    sharded model and optimizer state, one folder each, not a whole adapter."""
    folder = run_dir / "checkpoints" / f"checkpoint-{step}"
    assert (folder / "pytorch_model_fsdp_0").is_dir() and (folder / "optimizer_0").is_dir(), sorted(
        p.name for p in folder.iterdir())
    assert not (folder / "adapter_model.safetensors").exists()


def _assert_complete_adapter(run_dir: Path, base: Path) -> dict[str, torch.Tensor]:
    """Every LoRA A and B of every targeted module, whole and non-zero, and the adapter loads in plain PEFT."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    tensors = _adapter(run_dir)
    expected = {f"base_model.model.model.layers.{i}.{'self_attn' if t.endswith(('q_proj', 'k_proj', 'v_proj', 'o_proj')) else 'mlp'}.{t}.lora_{ab}.weight"
                for i in range(LAYERS) for t in TARGETS for ab in "AB"}
    assert set(tensors) == expected
    for name, tensor in tensors.items():
        rank_dim = 0 if ".lora_A." in name else 1
        assert tensor.shape[rank_dim] == 4 and tensor.numel() > 4, (name, tuple(tensor.shape))  # r=4, unsharded
        assert bool(tensor.abs().sum() > 0), f"{name} is all zeros"
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(run_dir / "adapter"))
    loaded = {n: p for n, p in model.named_parameters() if "lora_" in n}
    assert len(loaded) == len(expected)
    for name, tensor in tensors.items():
        assert torch.equal(loaded[name.replace(".weight", ".default.weight")], tensor)
    return tensors


@pytest.fixture
def legal_config(tiny_llama, legal_data, tmp_path) -> Path:
    return write_config(tmp_path / "run.yaml", tiny_llama, legal_data)


def test_fsdp2_lora_on_two_gloo_processes_saves_a_complete_adapter_that_matches_ddp(tiny_llama, legal_config,
                                                                                    tmp_path):
    """With gradient checkpointing on, as a large model would train: its wrappers must not empty the adapter."""
    fsdp, ddp = tmp_path / "fsdp", tmp_path / "ddp"
    result = _train(legal_config, fsdp, "fsdp", "--set", "model.gradient_checkpointing=true")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "effective batch 12 (6 x 1 accumulation x 2 processes, fsdp)" in result.stdout
    assert result.stdout.count("== summary") == 1, "one process reports"
    _assert_sharded_checkpoint(fsdp, 4)
    ours = _assert_complete_adapter(fsdp, tiny_llama)
    assert not (fsdp / "adapter" / "training_args.bin").exists(), "no pickle in the adapter"
    manifest = json.loads((fsdp / "manifest.json").read_text())
    assert manifest["metrics"]["steps"] == 4 and manifest["outputs"]["adapter"] == str(fsdp / "adapter")

    # one process with the whole batch of 12: the same gradients, summed in another order (measured 2.2e-8)
    single = tmp_path / "single"
    assert cli.main(["train", str(legal_config), *STEPS, "--set", f"output_dir={single}",
                     "--set", "train.batch_size=12"]) == 0
    alone = _adapter(single)
    assert max(float((ours[k] - alone[k]).abs().max()) for k in ours) <= 1e-6
    assert _losses(fsdp) == pytest.approx(_losses(single), rel=1e-6)

    result = _train(legal_config, ddp, "ddp")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    theirs = _adapter(ddp)
    # DDP on gloo ends further away: measured max abs difference 3.6e-3 after the four steps (LoRA weights up to
    # 0.13 in size; its step-1 gradient norm is 0.45427 where FSDP's and one process's are both 0.45212, from
    # the same step-1 loss). The tolerance is about three times the measurement.
    difference = max(float((ours[k] - theirs[k]).abs().max()) for k in ours)
    assert difference <= 1e-2, difference
    assert _losses(fsdp) == pytest.approx(_losses(ddp), rel=1e-4)


def test_dpo_under_fsdp_references_the_sharded_model_with_the_adapter_off(tiny_llama, tmp_path):
    """DPO's reference is the base with the adapter switched off (no second copy), on FSDP's sharded modules."""
    data_dir = tmp_path / "pairs"
    data_dir.mkdir()
    write_jsonl(data_dir / "train.jsonl", preference_rows(12))
    write_jsonl(data_dir / "eval.jsonl", preference_rows(4, offset=100))
    config = write_config(tmp_path / "dpo.yaml", tiny_llama, data_dir)
    config.write_text("method: dpo\n" + config.read_text())
    run_dir = tmp_path / "dpo"
    result = _train(config, run_dir, "fsdp")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "dpo: the reference is the base model (the adapter switched off" in result.stdout
    _assert_sharded_checkpoint(run_dir, 4)
    _assert_complete_adapter(run_dir, tiny_llama)
    losses = _losses(run_dir)
    assert len(losses) == 4 and losses[-1] < losses[0]
    # at step 1 the adapter (LoRA B = 0) is the reference itself: DPO's sigmoid loss is exactly log 2
    assert losses[0] == pytest.approx(0.693147, abs=1e-4)
    assert json.loads((run_dir / "manifest.json").read_text())["metrics"]["method"] == "dpo"


def _workers(launcher: subprocess.Popen) -> list[int]:
    """The training processes the launcher (torchrun's agent, in the `lora-ft train --nproc` process) started."""
    tasks = Path(f"/proc/{launcher.pid}/task")
    return sorted(int(pid) for task in tasks.iterdir() for pid in (task / "children").read_text().split())


LONG = ["--set", "train.max_steps=30", "--set", "train.save_steps=10"]


def test_an_fsdp_run_stopped_by_sigterm_resumes_and_ends_as_the_uninterrupted_run(legal_config, tmp_path):
    reference, run_dir = tmp_path / "reference", tmp_path / "run"
    result = _train(legal_config, reference, "fsdp", *LONG)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    command = [sys.executable, "-m", "lora_ft", "train", str(legal_config), *STEPS, *LONG, "--set",
               f"output_dir={run_dir}", "--set", "distributed.strategy=fsdp", "--nproc", "2"]
    launcher = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    watchdog = threading.Timer(900, launcher.kill)  # fails a hung run instead of hanging the suite; times nothing
    watchdog.start()
    seen = []
    for line in launcher.stderr:  # the main process's progress lines: wait until training is under way
        seen.append(line)
        if line.startswith("step 12/30"):
            break
    else:
        watchdog.cancel()
        pytest.fail("the run ended before step 12: " + "".join(seen)[-2000:])
    workers = _workers(launcher)
    assert len(workers) == 2, workers
    os.kill(workers[-1], signal.SIGTERM)  # one process is told; every process stops at the same step (agree)
    out, err = launcher.communicate()
    watchdog.cancel()
    assert launcher.returncode == 143, out[-2000:] + err[-2000:]
    from lora_ft.rundir import checkpoints

    complete, rejected = checkpoints.scan(run_dir / "checkpoints")
    stopped = max(c.step for c in complete)
    assert not rejected and 12 <= stopped < 30 and not (run_dir / "manifest.json").exists()
    _assert_sharded_checkpoint(run_dir, stopped)

    result = subprocess.run(command, capture_output=True, text=True, timeout=900, env=_env())
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["metrics"]["steps"] == 30 and manifest["metrics"]["resumed_from_step"] == stopped
    assert _losses(run_dir) == _losses(reference)
    ours, theirs = _adapter(run_dir), _adapter(reference)
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_an_fsdp_run_killed_while_committing_a_checkpoint_resumes_from_the_one_before(legal_config, tmp_path):
    """SIGKILL, as an OOM killer would, in every process while checkpoint-20's sharded files are on disk but not yet
    committed (lora-ft hashes them before writing the manifest that makes a checkpoint count): the same
    ``lora-ft train --nproc 2`` skips the uncommitted checkpoint, resumes from checkpoint-10, and ends bitwise as the
    uninterrupted run."""
    reference, run_dir = tmp_path / "reference", tmp_path / "run"
    result = _train(legal_config, reference, "fsdp", *LONG)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    options = [str(legal_config), *STEPS, *LONG, "--set", f"output_dir={run_dir}", "--set",
               "distributed.strategy=fsdp"]
    killed = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                             str(REPO / "tests" / "crash_run.py"), "commit:20", *options],
                            capture_output=True, text=True, timeout=900, env=_env())
    assert killed.returncode != 0 and not (run_dir / "manifest.json").exists(), killed.stderr[-2000:]
    from lora_ft.rundir import checkpoints

    complete, _rejected = checkpoints.scan(run_dir / "checkpoints")
    assert max(c.step for c in complete) == 10, [c.step for c in complete]
    assert '"step": 20' in (run_dir / "metrics.jsonl").read_text(), "the kill came at checkpoint-20, not before"

    result = subprocess.run([sys.executable, "-m", "lora_ft", "train", *options, "--nproc", "2"],
                            capture_output=True, text=True, timeout=900, env=_env())
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["metrics"]["steps"] == 30 and manifest["metrics"]["resumed_from_step"] == 10
    assert _losses(run_dir)[-20:] == _losses(reference)[-20:]
    ours, theirs = _adapter(run_dir), _adapter(reference)
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_qlora_under_fsdp_shards_4bit_weights_and_trains_as_one_process(tiny_llama, legal_config, tmp_path):
    """NF4 base weights stored in float32 (bnb_4bit_quant_storage = the compute dtype), so FSDP shards them like
    any tensor; LoRA trains in float32 on bitsandbytes' CPU kernels. The same steps as one process, and no pass
    through bitsandbytes' CPU inference kernel, which has no backward."""
    run_dir, single = tmp_path / "qlora", tmp_path / "single"
    nf4 = ["--set", "model.quantization=nf4"]
    result = _train(legal_config, run_dir, "fsdp", *nf4)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "(nf4, float32)" in result.stdout
    assert "gemv_4bit" not in result.stderr, "a 4-bit layer ran through a kernel without a backward"
    _assert_sharded_checkpoint(run_dir, 4)
    ours = _assert_complete_adapter(run_dir, tiny_llama)

    assert cli.main(["train", str(legal_config), *STEPS, *nf4, "--set", f"output_dir={single}",
                     "--set", "train.batch_size=12"]) == 0
    alone = _adapter(single)
    difference = max(float((ours[k] - alone[k]).abs().max()) for k in ours)
    assert difference <= 1e-6, difference  # measured 1.9e-8: the 4-bit shards gather back to the same weights
    assert _losses(run_dir) == pytest.approx(_losses(single), rel=1e-5)


def test_4bit_gradients_after_an_evaluation_are_those_of_a_fresh_model(tiny_llama):
    """bitsandbytes repacks a 4-bit layer for its CPU inference kernel (no backward) in an eval pass on AVX-512 BF16
    CPUs; lora-ft's evaluation before training must not leave training on that kernel (measured without the
    setting: LoRA gradients up to 166% off, 18 "gemv_4bit" warnings per backward)."""
    import warnings

    from peft import LoraConfig, get_peft_model

    from lora_ft.config import ModelSection
    from lora_ft.model import BaseModelSource, load_base_model
    from lora_ft.model.loading import keep_cpu_4bit_trainable

    model_cfg = ModelSection(base=str(tiny_llama), quantization="nf4", dtype="float32", attn_implementation="sdpa",
                             gradient_checkpointing=False)
    tokens = torch.arange(3, 43)[None]

    def gradients(evaluate_first: bool) -> dict:
        torch.manual_seed(0)
        base = load_base_model(BaseModelSource(str(tiny_llama), "tiny"), model_cfg, "cpu")
        keep_cpu_4bit_trainable(base)
        model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear",
                                                init_lora_weights=False))
        if evaluate_first:
            model.eval()
            with torch.no_grad():
                model(input_ids=tokens)
            model.train()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model(input_ids=tokens, labels=tokens).loss.backward()
        assert not [w for w in caught if "gemv_4bit" in str(w.message)]
        return {n: p.grad for n, p in model.named_parameters() if p.grad is not None}

    fresh, evaluated = gradients(False), gradients(True)
    assert fresh.keys() == evaluated.keys() and all(torch.allclose(fresh[n], evaluated[n]) for n in fresh)
