"""The GPU path's decisions, checked on the CPU wherever the invariant shows without a GPU: precision and casts,
FSDP arguments the trainer accepts, the 4-bit model's dtypes, DoRA magnitudes that train, the NaN guard's cost."""

from __future__ import annotations

import pytest
import torch

from lora_ft import distributed
from lora_ft.config import load_config

from .conftest import write_config


def _cuda_config(tiny_llama, legal_data, tmp_path, *overrides):
    from lora_ft.config import resolution as settings

    loaded = load_config(write_config(tmp_path / "run.yaml", tiny_llama, legal_data), list(overrides))
    return settings.resolve(loaded, has_cuda=True).config


def test_the_settings_resolved_for_a_gpu_ask_for_autocast_quantized_or_not(tiny_llama, legal_data, tmp_path, monkeypatch):
    from lora_ft.config import resolution as settings
    from lora_ft.training import mixed_precision, trainable_dtype

    cfg = _cuda_config(tiny_llama, legal_data, tmp_path)
    assert cfg.model.quantization == "nf4"
    assert mixed_precision(cfg) == {"bf16": True, "fp16": False}, "QLoRA computes in bf16, not float32"
    assert trainable_dtype(cfg) is None, "TRL's bf16 LoRA weights (and float32 DoRA magnitudes) are kept"
    assert cfg.train.optimizer == "adamw_torch_fused"
    # a GPU without bfloat16 (T4, V100): fp16 autocast with a gradient scaler, float32 trainable weights
    monkeypatch.setattr(settings, "_cuda_supports_bf16", lambda: False)
    old = _cuda_config(tiny_llama, legal_data, tmp_path)
    assert old.model.dtype == "float16"
    assert mixed_precision(old) == {"bf16": False, "fp16": True}
    assert trainable_dtype(old) == torch.float32
    cpu = settings.resolve(load_config(write_config(tmp_path / "cpu.yaml", tiny_llama, legal_data)),
                           has_cuda=False).config
    assert mixed_precision(cpu) == {"bf16": False, "fp16": False} and trainable_dtype(cpu) == torch.float32


def test_nf4_with_bf16_compute_keeps_norms_embeddings_and_head_in_bf16(tiny_llama):
    """No float32 upcast of the non-4-bit weights (which made every layer cast in and out of float32)."""
    import bitsandbytes as bnb

    from lora_ft.config import ModelSection
    from lora_ft.model import BaseModelSource, load_base_model

    model_cfg = ModelSection(base=str(tiny_llama), quantization="nf4", dtype="bfloat16",
                             attn_implementation="sdpa", gradient_checkpointing=False)
    model = load_base_model(BaseModelSource(str(tiny_llama), "tiny"), model_cfg, "cpu")
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
    dtypes = {name: p.dtype for name, p in model.named_parameters() if p.dtype != torch.uint8}
    assert dtypes["model.embed_tokens.weight"] == torch.bfloat16
    assert dtypes["model.norm.weight"] == torch.bfloat16
    assert dtypes["model.layers.0.input_layernorm.weight"] == torch.bfloat16


def test_fsdp_arguments_are_ones_the_trainer_accepts():
    from transformers import TrainingArguments

    launched = distributed.World(rank=0, local_rank=0, size=2, launched=True)
    settings = distributed.trainer_settings("fsdp", "cpu", launched, gradient_checkpointing=True)
    config = settings["fsdp_config"]
    assert config["version"] == 2 and config["activation_checkpointing"] is False  # the trainer's instead
    assert not {"use_orig_params", "sync_module_states", "backward_prefetch", "forward_prefetch"} & set(config), \
        "FSDP1 keys that FSDP2 ignores"
    args = TrainingArguments(output_dir="unused", use_cpu=True, gradient_checkpointing=False, report_to=[],
                             fsdp=settings["fsdp"], fsdp_config=config)  # accepted as given
    assert args.fsdp_config["version"] == 2 and args.fsdp_config["auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"


def test_the_sft_config_checkpoints_inside_the_layers_under_fsdp_given_stub_fsdp_arguments(tiny_llama, legal_data, tmp_path, monkeypatch):
    from lora_ft.methods.sft import sft_arguments
    from lora_ft.training import common_arguments

    monkeypatch.setenv("WORLD_SIZE", "1")  # one launched process: the FSDP path
    from lora_ft.config import resolution as settings

    cfg = settings.resolve(load_config(write_config(tmp_path / "run.yaml", tiny_llama, legal_data),
                                       ["distributed.strategy=fsdp", "model.gradient_checkpointing=true"]),
                           has_cuda=False).config
    monkeypatch.setattr(distributed, "trainer_settings", lambda *a: {})  # the CPU cannot build FSDP arguments
    args = sft_arguments(cfg, common_arguments(cfg, tmp_path / "ckpt", has_eval=False, report_to=["none"]))
    # the trainer's gradient checkpointing (no module wrappers: the saved adapter keeps every tensor, tests/test_fsdp.py)
    assert args.gradient_checkpointing is True


def test_8bit_optimizers_are_refused_under_multi_process_fsdp(tiny_llama, legal_data, tmp_path):
    from lora_ft.errors import UserError

    cfg = _cuda_config(tiny_llama, legal_data, tmp_path, "distributed.strategy=fsdp")
    distributed.check_supported(cfg, distributed.World(size=2))  # auto: adamw_torch_fused works on DTensors
    cfg.train.optimizer = "paged_adamw_8bit"
    with pytest.raises(UserError, match="sharded \\(DTensor\\) parameters"):
        distributed.check_supported(cfg, distributed.World(size=2))


def test_dora_magnitudes_stay_float32_and_train_under_bf16_qlora(tiny_llama, legal_data, tmp_path):
    """TRL casts a quantized model's LoRA weights to bf16 but leaves DoRA's magnitude vector in float32 (its
    updates are below bf16's resolution); lora-ft's own cast must not undo that."""
    from datasets import Dataset

    from lora_ft.config import LoraSection, ModelSection
    from lora_ft.model import BaseModelSource, attach_lora, load_base_model
    from lora_ft.training import build_trainer

    from lora_ft.config import resolution as settings

    cfg = settings.resolve(load_config(write_config(tmp_path / "run.yaml", tiny_llama, legal_data),
                                       ["model.quantization=nf4", "model.dtype=bfloat16", "lora.use_dora=true",
                                        "train.max_steps=1", "lora.dropout=0", "train.learning_rate=1e-3"]),
                           has_cuda=False).config
    assert isinstance(cfg.model, ModelSection) and isinstance(cfg.lora, LoraSection)
    model = attach_lora(load_base_model(BaseModelSource(str(tiny_llama), "tiny"), cfg.model, "cpu"), cfg.lora)
    rows = Dataset.from_dict({"input_ids": [[1, 5, 6, 7, 2]] * 4, "labels": [[-100, 5, 6, 7, 2]] * 4})
    trainer = build_trainer(model, None, cfg, rows, None, tmp_path / "ckpt", ["none"], [])
    magnitudes = {n: p for n, p in trainer.model.named_parameters() if "lora_magnitude_vector" in n}
    assert magnitudes and all(p.dtype == torch.float32 for p in magnitudes.values())
    before = {n: p.detach().clone() for n, p in magnitudes.items()}
    trainer.train()
    assert any(not torch.equal(before[n], p.detach()) for n, p in magnitudes.items()), "magnitudes train"


def test_the_nonfinite_guard_synchronises_once_per_step(monkeypatch):
    from types import SimpleNamespace

    from lora_ft.training import NonFiniteGuard

    model = torch.nn.Sequential(*[torch.nn.Linear(4, 4) for _ in range(50)])
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    calls = {"n": 0}
    real_bool = torch.Tensor.__bool__

    def counting_bool(self):
        calls["n"] += 1
        return real_bool(self)

    monkeypatch.setattr(torch.Tensor, "__bool__", counting_bool)
    NonFiniteGuard("stop").on_pre_optimizer_step(None, SimpleNamespace(global_step=0), None, model=model)
    assert calls["n"] == 1, f"{calls['n']} host synchronisations for 100 gradients"


def test_padding_free_rows_attend_per_sample_wherever_flash_attention_is_missing():
    """The decision is the attention implementation, not the device; boundaries are read once per forward."""
    from lora_ft import model as model_lib

    ids = torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2, 3]])
    query = torch.randn(1, 2, 9, 8)
    module = torch.nn.Module()
    module.is_causal = True
    calls = {"n": 0}
    real = torch.Tensor.nonzero

    def counting(self, *a, **k):
        calls["n"] += 1
        return real(self, *a, **k)

    torch.Tensor.nonzero = counting
    try:
        first, _ = model_lib.per_sample_sdpa(module, query, query, query, None, position_ids=ids)
        second, _ = model_lib.per_sample_sdpa(module, query, query, query, None, position_ids=ids)
    finally:
        torch.Tensor.nonzero = real
    assert calls["n"] == 1 and torch.equal(first, second)


def test_the_merge_chooses_the_gpu_when_its_free_memory_holds_the_float32_base(tiny_llama, monkeypatch):
    from lora_ft.exports import merging as merge

    assert merge.merge_device(str(tiny_llama)) == ("cuda" if torch.cuda.is_available() else "cpu")
    # the choice only, on stand-in figures for a GPU this machine has not
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda: (80 * 2**30, 80 * 2**30))
    assert merge.merge_device(str(tiny_llama)) == "cuda"
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda: (1000, 80 * 2**30))
    assert merge.merge_device(str(tiny_llama)) == "cpu", "too little free GPU memory: the CPU"
    assert merge.merge_device("org/model-on-the-hub") == "cpu"


def test_the_gpu_check_refuses_a_machine_without_a_gpu_and_its_reference_is_recorded():
    import json
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    reference = json.loads((repo / "scripts" / "gpu_reference_losses.json").read_text())
    assert reference["device"] == "cpu" and len(reference["losses"]) == 5
    assert all(9 < loss < 12 for loss in reference["losses"]), "a random-weight model starts near ln(49152) = 10.8"
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    result = subprocess.run([sys.executable, str(repo / "scripts" / "gpu_check.py"), "run"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 2 and "needs a CUDA GPU" in result.stderr
