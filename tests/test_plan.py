"""The pre-flight estimate: shapes and parameter counts match real models; settings move the estimate the right way."""

from __future__ import annotations

import pytest

from lora_ft import cli
from lora_ft import planning as plan
from lora_ft.config import load_config
from lora_ft.config.resolution import resolve

from .conftest import write_config


def _resolved(tmp_path, model_dir, data_dir, overrides=(), has_cuda=False):
    loaded = load_config(write_config(tmp_path / "run.yaml", model_dir, data_dir), list(overrides))
    return loaded, resolve(loaded, has_cuda=has_cuda).config


def test_shape_counts_match_the_real_models(tiny_llama, tiny_gpt2):
    from transformers import AutoModelForCausalLM

    for directory in (tiny_llama, tiny_gpt2):
        shape = plan.read_shape(str(directory))
        model = AutoModelForCausalLM.from_pretrained(directory)
        linear = sum(m.weight.numel() for n, m in model.named_modules()
                     if hasattr(m, "weight") and m.weight is not None and m.weight.dim() == 2
                     and "embed" not in n and "wte" not in n and "wpe" not in n and "lm_head" not in n)
        assert shape.linear_params == linear, directory


def test_lora_parameter_count_matches_peft(tiny_llama, legal_data, tmp_path):
    from transformers import AutoModelForCausalLM

    from lora_ft.model import attach_lora, count_parameters

    for overrides in ([], ["lora.top_n_layers=1", "lora.r=8"], ["lora.target_modules=[q_proj, v_proj]"]):
        _, cfg = _resolved(tmp_path, tiny_llama, legal_data, overrides)
        peft_model = attach_lora(AutoModelForCausalLM.from_pretrained(tiny_llama), cfg.lora)
        assert plan.lora_param_count(plan.read_shape(str(tiny_llama)), cfg) == count_parameters(peft_model)[0]


def test_settings_move_the_estimate_the_right_way(tiny_llama, legal_data, tmp_path):
    shape = plan.shape_from_config({  # Llama-3-8B's shape
        "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
        "num_key_value_heads": 8, "vocab_size": 128256, "max_position_embeddings": 8192})
    assert shape.total_params == pytest.approx(8.03e9, rel=0.01)
    _, base = _resolved(tmp_path, tiny_llama, legal_data, ["data.max_seq_length=512"], has_cuda=True)
    base.data.max_seq_length = 2048
    qlora = plan.estimate(shape, base, 10**6, "H100")
    full = base.model_copy(deep=True)
    full.model.quantization = "none"
    no_ckpt = base.model_copy(deep=True)
    no_ckpt.model.gradient_checkpointing = False
    assert 4.5 * plan.GiB < qlora.weights < 6.5 * plan.GiB  # about 0.52 byte per linear weight, 16-bit embeddings
    assert plan.estimate(shape, full, 10**6, "H100").weights > 2.5 * qlora.weights
    assert plan.estimate(shape, no_ckpt, 10**6, "H100").activations > 5 * qlora.activations
    assert qlora.seconds_per_epoch and qlora.seconds_per_epoch > 0


def test_a_plan_that_does_not_fit_names_settings_that_do(tiny_llama, legal_data, tmp_path):
    _, cfg = _resolved(tmp_path, tiny_llama, legal_data, ["train.batch_size=8"])
    shape = plan.read_shape(str(tiny_llama))
    result = plan.make_plan(cfg, shape, 10_000, 100, "cpu", longest_sample=128)
    result.budget_bytes = result.estimate.total * 0.9
    result.fixes = plan.suggestions(shape, cfg, 10_000, "cpu", result.budget_bytes, 128)
    text = result.render()
    assert "fits: NO" in text and "--set model.gradient_checkpointing=true" in text


def test_cli_plan_and_measure(tiny_llama, legal_data, tmp_path, capsys):
    config = write_config(tmp_path / "run.yaml", tiny_llama, legal_data)
    assert cli.main(["plan", str(config), "--measure"]) == 0
    out = capsys.readouterr().out
    assert "peak memory estimate (cpu" in out and "estimate error" in out and "fits: yes" in out
    assert "steps x" in out  # time per epoch from the measured step time
    assert cli.main(["plan", str(config), "--gpu", "80"]) == 0
    assert "of a 80 GB GPU" in capsys.readouterr().out
    assert cli.main(["plan", str(config), "--gpu", "7"]) == 2
    assert "unknown --gpu 7" in capsys.readouterr().err
    assert not list(tmp_path.glob("run/*")), "planning writes no run directory"


def test_embedded_shape_matches_its_config():
    from lora_ft.embedded import EMBEDDED_MODEL_SHAPE

    shape = plan.shape_from_config(dict(EMBEDDED_MODEL_SHAPE, tie_word_embeddings=True))
    assert shape.total_params == pytest.approx(134.5e6, rel=0.01)


def test_a_gpu_measurement_is_compared_like_with_like():
    """max_memory_allocated counts tensors only: the CUDA context in the estimate is left out of the comparison."""
    from lora_ft.planning import GiB, Estimate, Plan

    est = Estimate(weights=4 * GiB, lora_states=1 * GiB, activations=2 * GiB, logits=1 * GiB, overhead=0.6 * GiB,
                   lora_params=1, tokens_per_micro_batch=1, flops_per_token=1.0)
    gpu = Plan(est, "NVIDIA H200", 141e9, "a 141 GB GPU", 1, 1, [], measured_peak=8 * GiB)
    assert gpu.compared_estimate()[0] == 8 * GiB and "estimate error +0%" in gpu.render()
    cpu = Plan(est, "cpu", 24 * GiB, "RAM", 1, 1, [], measured_peak=8.6 * GiB)
    assert cpu.compared_estimate()[0] == est.total and "estimate error +0%" in cpu.render()


LLAMA_70B = {"hidden_size": 8192, "intermediate_size": 28672, "num_hidden_layers": 80, "num_attention_heads": 64,
             "num_key_value_heads": 8, "vocab_size": 128256, "max_position_embeddings": 8192}


def test_fsdp_shards_weights_and_lora_states_not_activations(tiny_llama, legal_data, tmp_path):
    """FSDP2 over N processes: base weights (NF4 too), LoRA weights, gradients and optimizer state 1/N each; the
    whole embeddings and two decoder layers gathered for the computation; activations and logits whole; before
    sharding, every process loads the whole 4-bit model. DDP keeps everything whole in every process."""
    shape = plan.shape_from_config(LLAMA_70B)
    _, ddp = _resolved(tmp_path, tiny_llama, legal_data, ["data.max_seq_length=512"], has_cuda=True)
    ddp.data.max_seq_length = 2048
    fsdp = ddp.model_copy(deep=True)
    fsdp.distributed.strategy = "fsdp"
    one, eight = plan.estimate(shape, fsdp, 10**6, "H100"), plan.estimate(shape, fsdp, 10**6, "H100", processes=8)
    assert not one.sharded and eight.sharded
    assert eight.weights == pytest.approx(one.weights / 8) and eight.lora_states == pytest.approx(one.lora_states / 8)
    assert (eight.activations, eight.logits, eight.overhead) == (one.activations, one.logits, one.overhead)
    layer = shape.linear_params / 80 * plan.NF4_BYTES + 2 * 8192 * 2  # NF4 linear weights and two bf16 norms
    assert eight.gathered == pytest.approx(shape.embedding_params * 2 + 2 * layer)
    assert eight.loading_peak == pytest.approx(one.weights + plan.CUDA_OVERHEAD)  # the whole 4-bit model
    assert eight.peak == max(eight.total, eight.loading_peak)
    assert eight.seconds_per_epoch == pytest.approx(one.seconds_per_epoch / 8)
    whole = plan.estimate(shape, ddp, 10**6, "H100", processes=8)
    assert not whole.sharded and whole.total == pytest.approx(plan.estimate(shape, ddp, 10**6, "H100").total)

    # 16-bit 70B (about 131 GiB of weights) fits 80 GB GPUs only sharded, with no 4-bit loading peak
    fsdp.model.quantization = "none"
    assert not plan.make_plan(fsdp, shape, 10**6, 1000, "cuda", gpu="80").fits
    sharded = plan.make_plan(fsdp, shape, 10**6, 1000, "cuda", gpu="80", processes=8)
    assert sharded.fits and sharded.estimate.loading_peak == 0 and sharded.steps_per_epoch == 1000 // (2 * 8) + 1
    text = sharded.render()
    assert "fsdp over 8 processes" in text and "weights (1/8 shard)" in text and "per process of 8" in text


def test_cli_plan_for_several_processes(tiny_llama, legal_data, tmp_path, capsys):
    config = write_config(tmp_path / "run.yaml", tiny_llama, legal_data)
    assert cli.main(["plan", str(config), "--set", "distributed.strategy=fsdp", "--gpu", "80", "--nproc", "2"]) == 0
    out = capsys.readouterr().out
    assert "fsdp over 2 processes" in out and "gathered: embeddings + 2 layers" in out and "fits: yes" in out
    assert cli.main(["plan", str(config), "--nproc", "2", "--measure"]) == 2
    assert "cannot measure several" in capsys.readouterr().err
