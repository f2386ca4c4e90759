"""The CUDA path: QLoRA defaults (NF4, bfloat16 autocast, checkpointing, fused AdamW) on a real GPU.

Skipped where no CUDA GPU is present; the CPU suite covers the same decisions with `resolve(has_cuda=True)`
(tests/test_config.py).
"""

from __future__ import annotations

import pytest

from lora_ft.config import load_config

from .conftest import write_config

pytestmark = pytest.mark.gpu


def test_qlora_defaults_on_cuda(tiny_llama, legal_data, tmp_path):
    import bitsandbytes as bnb

    from lora_ft.commands import train as pipeline

    loaded = load_config(write_config(tmp_path / "run.yaml", tiny_llama, legal_data), ["train.max_steps=2"])
    lines: list[str] = []
    result = pipeline.train(loaded, say=lines.append)
    assert any("(nf4, bfloat16) on cuda" in line for line in lines)
    saved = load_config(result.run_dir / "config.yaml").config
    assert saved.model.quantization == "nf4" and saved.model.gradient_checkpointing is True
    assert saved.train.optimizer == "adamw_torch_fused"
    assert "GiB allocated" in result.manifest["metrics"]["peak_memory"]
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in result.model.modules())


def test_fsdp_path_trains_a_4bit_model_in_one_launched_process(tiny_llama, legal_data, tmp_path):
    """FSDP with QLoRA (4-bit weights stored in bfloat16, sharded by FSDP) through torchrun, one process."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    config = write_config(tmp_path / "run.yaml", tiny_llama, legal_data)
    repo = str(Path(__file__).resolve().parent.parent)  # ahead of, not instead of, an existing PYTHONPATH
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (repo, os.environ.get("PYTHONPATH")) if p)}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=1", "-m", "lora_ft",
         "train", str(config), "--set", "distributed.strategy=fsdp", "--set", "train.max_steps=2",
         "--set", "model.quantization=nf4"], capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["metrics"]["steps"] == 2
    assert "GiB allocated" in manifest["metrics"]["peak_memory"]
    print("FSDP QLoRA peak memory:", manifest["metrics"]["peak_memory"])
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").is_file()


def test_qlora_runs_its_residual_stream_and_head_in_bf16_on_cuda(tiny_llama):
    """No float32 upcast: under the trainer's autocast, hidden states and logits are bf16 (not float32 with every
    4-bit layer casting in and out)."""
    import torch

    from lora_ft.config import LoraSection, ModelSection
    from lora_ft.model import BaseModelSource, attach_lora, load_base_model

    model_cfg = ModelSection(base=str(tiny_llama), quantization="nf4", dtype="bfloat16",
                             attn_implementation="sdpa", gradient_checkpointing=False)
    model = attach_lora(load_base_model(BaseModelSource(str(tiny_llama), "tiny"), model_cfg, "cuda"),
                        LoraSection(r=4, alpha=8, dropout=0.0))
    ids = torch.tensor([[1, 5, 6, 7, 8, 2]], device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = model(input_ids=ids, output_hidden_states=True)
    assert out.hidden_states[1].dtype == torch.bfloat16 and out.logits.dtype == torch.bfloat16
    assert model.get_base_model().model.norm.weight.dtype == torch.bfloat16


def test_dpo_with_qlora_on_cuda(tiny_llama, preference_data, tmp_path):
    """Preference tuning on the GPU path: a 4-bit base in bfloat16 autocast, the adapter-off reference."""
    from lora_ft.commands import train as pipeline

    config = write_config(tmp_path / "dpo.yaml", tiny_llama, preference_data)
    config.write_text("method: dpo\n" + config.read_text())
    result = pipeline.train(load_config(config, ["train.max_steps=4", "train.learning_rate=1e-3"]),
                            say=lambda _: None)
    saved = load_config(result.run_dir / "config.yaml").config
    assert saved.model.quantization == "nf4" and saved.method == "dpo"
    assert result.outcome.eval_loss_after < result.outcome.eval_loss_before
    assert result.outcome.rewards_after["margin"] > 0
    assert "GiB allocated" in result.manifest["metrics"]["peak_memory"]
