"""The attention kernel chosen per model: `auto` asks the model's transformers class what it supports (Gemma 2 has
no SDPA), an explicit kernel the model does not support is refused by its key before loading, a class that cannot
be known falls back to SDPA and says so; padding-free batches stay exact under every kernel chosen."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from lora_ft.config import load_config, resolve
from lora_ft.config.attention import AttentionSupport, choose
from lora_ft.errors import UserError

from .conftest import run_cli, write_config
from .model_families import family_builder


@pytest.fixture(scope="module")
def family_dir(tmp_path_factory):
    return family_builder(tmp_path_factory.mktemp("attention-families"))


def _config(tmp_path: Path, model_dir: Path, data_dir: Path, name: str = "run") -> Path:
    return write_config(tmp_path / f"{name}.yaml", model_dir, data_dir, output_dir=tmp_path / name)


def test_auto_picks_eager_for_gemma2_says_why_once_and_trains(family_dir, legal_data, tmp_path, capsys):
    config = _config(tmp_path, family_dir("gemma2"), legal_data)
    code, out, _ = run_cli(capsys, ["validate", str(config)])
    assert code == 0
    assert "attn_implementation: eager" in out  # the resolved value is what validate prints
    assert "attention: eager (Gemma2ForCausalLM does not support sdpa)" in out

    code, out, _ = run_cli(capsys, ["train", str(config), "--set", "train.max_steps=2"])
    assert code == 0
    assert out.count("attention: eager (Gemma2ForCausalLM does not support sdpa)") == 1
    assert "padded batches under eager attention" in out
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())  # the run records what it used
    assert saved["model"]["attn_implementation"] == "eager" and saved["train"]["padding_free"] is False
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["metrics"]["steps"] == 2 and manifest["metrics"]["eval_loss_after"] is not None


@pytest.mark.parametrize("family,model_class", [("llama", "LlamaForCausalLM"), ("qwen2", "Qwen2ForCausalLM")])
def test_auto_picks_sdpa_where_the_class_supports_it(family, model_class, family_dir, legal_data, tmp_path):
    loaded = load_config(_config(tmp_path, family_dir(family), legal_data))
    resolved = resolve(loaded, has_cuda=False)
    assert resolved.config.model.attn_implementation == "sdpa"
    assert f"attention: sdpa ({model_class} supports it)" in resolved.notes
    assert resolved.config.train.padding_free is True  # padding-free rows run per sample through SDPA


def test_the_embedded_model_is_asked_as_llama_without_loading_it(tmp_path):
    (tmp_path / "train.jsonl").write_text('{"text": "hello"}\n')
    (tmp_path / "run.yaml").write_text("model:\n  base: embedded\ndata:\n  train:\n    - path: train.jsonl\n")
    resolved = resolve(load_config(tmp_path / "run.yaml"), has_cuda=False)
    assert "attention: sdpa (LlamaForCausalLM supports it)" in resolved.notes


def test_flash_attention_where_it_runs_and_the_class_supports_it(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: object() if name == "flash_attn" else real(name, *a))
    both, no_flash = AttentionSupport("LlamaForCausalLM"), AttentionSupport("NoFlashForCausalLM", flash=False)
    assert choose(both, "cuda", "bfloat16").implementation == "flash_attention_2"
    assert choose(both, "cpu", "float32").implementation == "sdpa"
    assert choose(both, "cuda", "float32").reason == "LlamaForCausalLM supports it; FlashAttention-2 computes in 16-bit"
    picked = choose(no_flash, "cuda", "bfloat16")
    assert picked.implementation == "sdpa" and "NoFlashForCausalLM does not support FlashAttention-2" in picked.reason
    eager = choose(AttentionSupport("Gemma2ForCausalLM", sdpa=False, flash=False), "cuda", "bfloat16")
    assert eager.implementation == "eager"


def test_explicit_sdpa_on_gemma2_is_refused_by_its_key_before_loading(family_dir, legal_data, tmp_path, capsys):
    config = _config(tmp_path, family_dir("gemma2"), legal_data)
    config.write_text(config.read_text().replace("  base:", "  attn_implementation: sdpa\n  base:"))
    for command in ("validate", "train"):
        code, _, err = run_cli(capsys, [command, str(config)])
        assert code == 2, command
        assert f"{config}:3 (model.attn_implementation)" in err  # the key, by file and line
        assert "model.attn_implementation is sdpa, but Gemma2ForCausalLM does not support sdpa" in err
        assert "fix: set model.attn_implementation: eager (or auto" in err
        assert len(err.splitlines()) < 10, "one screen"
    assert not (tmp_path / "run").exists(), "refused before anything was written or loaded"
    code, _, err = run_cli(capsys, ["validate", str(config), "--set", "model.attn_implementation=eager"])
    assert code == 0


def test_flash_attention_2_needs_flash_attn_a_cuda_gpu_and_16_bit(family_dir, legal_data, tmp_path, capsys,
                                                                   monkeypatch):
    import importlib.util

    config = _config(tmp_path, family_dir("llama"), legal_data)
    flash = ["--set", "model.attn_implementation=flash_attention_2"]
    if importlib.util.find_spec("flash_attn") is None:
        code, _, err = run_cli(capsys, ["validate", str(config), *flash])
        assert code == 2 and "the flash-attn package is not installed" in err and "model.attn_implementation" in err
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: object() if name == "flash_attn" else real(name, *a))
    loaded = load_config(config, ["model.attn_implementation=flash_attention_2"])
    with pytest.raises(UserError, match="needs a CUDA GPU; this run is on the cpu") as refused:
        resolve(loaded, has_cuda=False)
    assert "model.attn_implementation: auto" in refused.value.fix
    loaded = load_config(config, ["model.attn_implementation=flash_attention_2", "model.dtype=float32",
                                  "model.quantization=none"])
    with pytest.raises(UserError, match="computes in 16-bit; model.dtype is float32"):
        resolve(loaded, has_cuda=True)


@pytest.mark.parametrize("case", ["unknown-architecture", "remote-code", "hub-model-not-downloaded"])
def test_a_class_that_cannot_be_known_falls_back_to_sdpa_and_says_so(case, legal_data, tmp_path):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    config = {"model_type": "toy_unknown", "architectures": ["ToyForCausalLM"], "hidden_size": 64,
              "num_hidden_layers": 2}
    if case == "remote-code":
        config.update(model_type="llama", auto_map={"AutoModelForCausalLM": "modeling_toy.ToyForCausalLM"})
    (model_dir / "config.json").write_text(json.dumps(config))
    overrides = ["model.trust_remote_code=true"] if case == "remote-code" else []
    if case == "hub-model-not-downloaded":
        overrides = ["model.base=lora-ft-tests/not-in-the-cache"]
    loaded = load_config(_config(tmp_path, model_dir, legal_data), overrides)
    resolved = resolve(loaded, has_cuda=False)
    assert resolved.config.model.attn_implementation == "sdpa"
    note = next(n for n in resolved.notes if n.startswith("attention: sdpa"))
    assert "the model's class is not known here" in note and "set model.attn_implementation: eager" in note
    assert {"unknown-architecture": "no causal-LM class for its model_type 'toy_unknown'",
            "remote-code": "remote code (modeling_toy.ToyForCausalLM)",
            "hub-model-not-downloaded": "cannot be read before the model is downloaded"}[case] in note


def test_a_refusal_at_load_time_names_the_key(family_dir):
    """Where the class was not known beforehand (a hub model), transformers' refusal still becomes a one-screen
    error naming the key and the fix."""
    from lora_ft.config import ModelSection
    from lora_ft.model.loading import BaseModelSource, load_base_model

    section = ModelSection(base="x", attn_implementation="sdpa", quantization="none", dtype="float32")
    with pytest.raises(UserError) as refused:
        load_base_model(BaseModelSource(str(family_dir("gemma2")), "gemma-2-tiny"), section, "cpu")
    assert "model.attn_implementation: sdpa" in refused.value.title and "Gemma2ForCausalLM" in refused.value.title
    assert refused.value.fix == "set model.attn_implementation: eager"


def test_padding_free_batches_under_eager_give_the_padded_loss(family_dir, legal_data, tmp_path):
    """Eager attention keeps the samples of a padding-free row apart with transformers' block-diagonal mask, built
    from the position ids (use_cache is off in training): the same losses as padded batches."""
    from lora_ft.commands import train as pipeline

    losses = {}
    for padding_free in ("true", "false"):
        loaded = load_config(_config(tmp_path, family_dir("gemma2"), legal_data, f"run-{padding_free}"),
                             [f"train.padding_free={padding_free}", "train.max_steps=1", "lora.dropout=0"])
        result = pipeline.train(loaded)
        assert result.manifest["metrics"]["steps"] == 1
        losses[padding_free] = (result.manifest["metrics"]["eval_loss_before"],
                                result.manifest["metrics"]["train_loss"])
    assert losses["true"] == pytest.approx(losses["false"], rel=1e-4)


@pytest.mark.parametrize("model_type", ["mistral", "gemma3_text"])
def test_per_sample_attention_keeps_the_sliding_window(model_type):
    """A sliding-window layer attends to the last `sliding_window` tokens only; the per-sample SDPA path of
    padding-free rows keeps that window (it once attended to the whole sample)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from lora_ft.model import use_per_sample_attention

    extra = {"head_dim": 16, "query_pre_attn_scalar": 16} if model_type.startswith("gemma") else {}
    config = AutoConfig.for_model(model_type, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2, vocab_size=300, sliding_window=4,
                                  use_cache=False, **extra)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").eval()
    lengths = [5, 9, 3, 7]  # three of them longer than the window
    ids = torch.randint(3, 300, (1, sum(lengths)), generator=torch.Generator().manual_seed(0))
    position_ids = torch.cat([torch.arange(n) for n in lengths]).unsqueeze(0)
    with torch.no_grad():
        separate = torch.cat([model(input_ids=part).logits for part in ids.split(lengths, dim=1)], dim=1)
        use_per_sample_attention(model, True)
        per_sample = model(input_ids=ids, position_ids=position_ids).logits
        use_per_sample_attention(model, False)
    torch.testing.assert_close(per_sample, separate, rtol=1e-5, atol=1e-5)
