"""GGUF export: tensors, metadata and tokenizer survive the trip to GGUF, and llama.cpp / Ollama can use the files.

The round-trip tests read the files back with the ``gguf`` package and with transformers; llama.cpp itself loads the
files in the engine tier (tests/engines/test_gguf_llama_cpp.py), where its own environment is built.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from lora_ft.exports import gguf_writer as gguf_export
from lora_ft.errors import UserError
from lora_ft.exports.gguf_writer import SUPPORTED_TYPES, export_gguf, unpermute_qk
from lora_ft.exports.ollama import ollama_template, write_modelfile

from .conftest import CHATML

# llama.cpp names of one Llama block's tensors -> Hugging Face names, written out independently of the exporter.
LLAMA_BLOCK = {
    "attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj", "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}
LLAMA_TOP = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
REAL_LOAD = gguf_export._load
TOKEN_IDS = [1, 5, 40, 77, 120, 250, 399, 2, 3, 7]
SMOLLM_TEMPLATE = (  # SmolLM2-Instruct's template: ChatML with a default system message
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def quiet(_: str) -> None:
    pass


@pytest.fixture(scope="module")
def exported(tiny_llama, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("gguf")
    paths = export_gguf(tiny_llama, out, types=("f16", "q8_0"))
    return {p.name.removeprefix("model-").removesuffix(".gguf"): p for p in paths}


def hf_tensors(model_dir: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(model_dir / "model.safetensors")


def llama_hf_name(gguf_name: str) -> str:
    stem, _, suffix = gguf_name.rpartition(".")
    parts = stem.split(".")
    if parts[0] == "blk":
        return f"model.layers.{parts[1]}.{LLAMA_BLOCK[parts[2]]}.{suffix}"
    return f"{LLAMA_TOP[stem]}.{suffix}"


def read_tensors(path: Path) -> dict[str, tuple[str, np.ndarray]]:
    """Every tensor in a GGUF file, dequantized to float32 in Hugging Face (row-major) shape, with its type name."""
    from gguf import GGUFReader
    from gguf.quants import dequantize

    return {t.name: (t.tensor_type.name, dequantize(np.asarray(t.data), t.tensor_type).astype(np.float32))
            for t in GGUFReader(path).tensors}


def metadata(path: Path) -> dict[str, object]:
    from gguf import GGUFReader

    return {key: field.contents() for key, field in GGUFReader(path).fields.items() if not key.startswith("GGUF.")}


def hf_logits(model_dir: Path, ids: list[int]) -> np.ndarray:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()


# ----------------------------------------------------------------------------------------------------------------
# 1. Round trip through the gguf reader


def test_f16_tensors_round_trip(exported, tiny_llama):
    config = json.loads((tiny_llama / "config.json").read_text())
    want = hf_tensors(tiny_llama)
    got = read_tensors(exported["f16"])
    assert "output.weight" not in got, "tied embeddings are not written twice"
    assert {llama_hf_name(name) for name in got} == set(want)
    for name, (kind, data) in got.items():
        if name.startswith("blk.") and name.split(".")[2] in ("attn_q", "attn_k"):
            heads = config["num_attention_heads"] if ".attn_q." in name else config["num_key_value_heads"]
            data = unpermute_qk(data, heads)
        reference = want[llama_hf_name(name)]
        if reference.ndim == 1:
            assert kind == "F32", f"{name} (1-D) stays float32"
            np.testing.assert_array_equal(data, reference, err_msg=name)
        else:
            assert kind == "F16", name
            np.testing.assert_array_equal(data, reference.astype(np.float16).astype(np.float32), err_msg=name)


def test_q8_0_tensors_round_trip_within_half_a_quantization_step(exported, tiny_llama):
    """Q8_0 stores blocks of 32 values as int8 times one f16 scale (block max / 127): each value is within half a
    step of the original, plus the rounding of the scale to f16; we allow 0.6 steps."""
    config = json.loads((tiny_llama / "config.json").read_text())
    want = hf_tensors(tiny_llama)
    for name, (kind, data) in read_tensors(exported["q8_0"]).items():
        if name.startswith("blk.") and name.split(".")[2] in ("attn_q", "attn_k"):
            heads = config["num_attention_heads"] if ".attn_q." in name else config["num_key_value_heads"]
            data = unpermute_qk(data, heads)
        reference = want[llama_hf_name(name)]
        if reference.ndim == 1 or name.endswith("_norm.weight"):
            assert kind == "F32", name
            np.testing.assert_array_equal(data, reference, err_msg=name)
            continue
        assert kind == "Q8_0", name
        blocks = reference.reshape(-1, 32)
        step = np.abs(blocks).max(axis=1, keepdims=True) / 127
        error = np.abs(data.reshape(-1, 32) - blocks)
        assert (error <= 0.6 * step + 1e-7).all(), f"{name}: max error {error.max():.2e}"


def test_bf16_and_f32_exports(tiny_llama, tmp_path):
    """The two extra types: f32 is exact, bf16 keeps 8 significant bits (relative error at most 2**-8)."""
    config = json.loads((tiny_llama / "config.json").read_text())
    paths = export_gguf(tiny_llama, tmp_path, types=["BF16", "f32", "bf16"])
    assert [p.name for p in paths] == ["model-bf16.gguf", "model-f32.gguf"]
    want = hf_tensors(tiny_llama)
    for path, rtol in zip(paths, (2.0**-8, 0.0), strict=True):
        for name, (_, data) in read_tensors(path).items():
            if ".attn_q." in name or ".attn_k." in name:
                heads = config["num_attention_heads"] if ".attn_q." in name else config["num_key_value_heads"]
                data = unpermute_qk(data, heads)
            np.testing.assert_allclose(data, want[llama_hf_name(name)], rtol=rtol, atol=0, err_msg=name)
    assert [metadata(p)["general.file_type"] for p in paths] == [32, 0]


def test_metadata_describes_the_model_and_its_tokenizer(exported, tiny_llama, chat_tokenizer):
    config = json.loads((tiny_llama / "config.json").read_text())
    meta = metadata(exported["f16"])
    assert meta["general.architecture"] == "llama"
    assert meta["general.file_type"] == 1
    assert meta["llama.block_count"] == config["num_hidden_layers"] == 3
    assert meta["llama.embedding_length"] == config["hidden_size"]
    assert meta["llama.feed_forward_length"] == config["intermediate_size"]
    assert meta["llama.context_length"] == config["max_position_embeddings"]
    assert meta["llama.attention.head_count"] == config["num_attention_heads"]
    assert meta["llama.attention.head_count_kv"] == config["num_key_value_heads"]
    assert meta["llama.rope.freq_base"] == pytest.approx(config["rope_parameters"]["rope_theta"])
    assert meta["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(config["rms_norm_eps"])
    assert meta["llama.vocab_size"] == config["vocab_size"] == len(chat_tokenizer)
    assert meta["tokenizer.ggml.model"] == "gpt2" and meta["tokenizer.ggml.pre"] == "gpt-2"
    tokens = meta["tokenizer.ggml.tokens"]
    assert len(tokens) == config["vocab_size"] and len(meta["tokenizer.ggml.token_type"]) == len(tokens)
    assert tokens[2] == "<|im_end|>" and meta["tokenizer.ggml.token_type"][2] == 3  # CONTROL
    assert meta["tokenizer.ggml.eos_token_id"] == chat_tokenizer.eos_token_id == 2
    assert meta["tokenizer.ggml.bos_token_id"] == chat_tokenizer.bos_token_id
    assert meta["tokenizer.ggml.add_bos_token"] is False  # the tokenizer adds no BOS; nor may llama.cpp
    assert meta["tokenizer.chat_template"] == chat_tokenizer.chat_template == CHATML
    assert len(meta["tokenizer.ggml.merges"]) > 0
    assert metadata(exported["q8_0"])["general.file_type"] == 7
    umask = os.umask(0)
    os.umask(umask)
    # Ordinary permissions, not a temporary file's 0600: Ollama's server may run as another user.
    assert exported["f16"].stat().st_mode & 0o777 == 0o666 & ~umask


# ----------------------------------------------------------------------------------------------------------------
# 2. transformers reads the files back into the same model


# Logits of this model have a std of about 0.16. Measured largest differences: f16 2.2e-4 (half precision's 11
# bits), q8_0 7.7e-3 (8-bit weights with one scale per block of 32); each bound is about 4x and 2x those.
@pytest.mark.parametrize(("kind", "tolerance"), [("f16", 1e-3), ("q8_0", 1.5e-2)])
def test_transformers_loads_the_gguf_with_the_same_logits(exported, tiny_llama, kind, tolerance):
    import torch
    from transformers import AutoModelForCausalLM

    path = exported[kind]
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    with torch.no_grad():
        got = model(torch.tensor([TOKEN_IDS])).logits[0].numpy()
    np.testing.assert_allclose(got, hf_logits(tiny_llama, TOKEN_IDS), atol=tolerance, rtol=0)


def test_gpt2_exports_with_transposed_conv1d_weights(tiny_gpt2, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    (path,) = export_gguf(tiny_gpt2, tmp_path, types=("f16",))
    meta = metadata(path)
    assert meta["general.architecture"] == "gpt2" and meta["gpt2.context_length"] == 512
    tensors = read_tensors(path)
    assert tensors["blk.0.attn_qkv.weight"][1].shape == (3 * 64, 64)  # HF Conv1D stores (in, out) = (64, 192)
    assert tensors["position_embd.weight"][0] == "F32"
    # transformers maps GGUF context_length to GPT-2's n_ctx, not n_positions, so say it here.
    model = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=path.name, dtype=torch.float32,
                                                 n_positions=512).eval()
    with torch.no_grad():
        got = model(torch.tensor([TOKEN_IDS])).logits[0].numpy()
    np.testing.assert_allclose(got, hf_logits(tiny_gpt2, TOKEN_IDS), atol=2e-3, rtol=0)


def test_permutation_is_inverted_exactly():
    weights = np.arange(8 * 6 * 3, dtype=np.float32).reshape(8 * 6, 3)
    np.testing.assert_array_equal(unpermute_qk(gguf_export.permute_qk(weights, 6), 6), weights)


# ----------------------------------------------------------------------------------------------------------------
# 3. The Ollama Modelfile


def test_modelfile_for_a_chatml_model(tmp_path):
    gguf_path = tmp_path / "model-q8_0.gguf"
    path = write_modelfile(gguf_path, tmp_path, CHATML, ["<|im_end|>", "<|endoftext|>"],
                           system_prompt="You are a careful legal assistant.")
    assert path == tmp_path / "Modelfile"
    text = path.read_text()
    lines = text.splitlines()
    assert "FROM ./model-q8_0.gguf" in lines
    assert 'PARAMETER stop "<|im_end|>"' in lines and 'PARAMETER stop "<|endoftext|>"' in lines
    assert 'SYSTEM """You are a careful legal assistant."""' in lines
    template = text.split('TEMPLATE """', 1)[1].split('"""', 1)[0]
    assert template == ollama_template(CHATML)
    assert "{{ .System }}" in template and "{{- range .Messages }}" in template
    assert "<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n" in template
    assert template.endswith("<|im_start|>assistant\n")
    assert template.count("{{") == template.count("}}")
    assert "{{ else }}" not in template, "this template adds no default system message"


def test_modelfile_keeps_a_default_system_message_and_absolute_paths(tmp_path):
    elsewhere = tmp_path / "models" / "model-q8_0.gguf"
    text = write_modelfile(elsewhere, tmp_path / "ollama", SMOLLM_TEMPLATE, ["<|im_end|>"]).read_text()
    assert f"FROM {elsewhere.resolve()}" in text.splitlines()
    assert ("{{ else }}<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
            "Face<|im_end|>\n{{ end }}") in text
    assert "SYSTEM" not in text


def test_modelfile_for_another_template_leaves_it_to_ollama(tmp_path):
    llama3 = "{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>{% endfor %}"
    text = write_modelfile(tmp_path / "model-q8_0.gguf", tmp_path, llama3, ["<|eot_id|>"]).read_text()
    assert "TEMPLATE" not in text.replace("No TEMPLATE", "")
    assert 'PARAMETER stop "<|eot_id|>"' in text


# ----------------------------------------------------------------------------------------------------------------
# 4. Bad inputs


def test_unsupported_architecture_is_a_user_error(tmp_path):
    from transformers import MistralConfig

    MistralConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=100).save_pretrained(tmp_path / "mistral")
    with pytest.raises(UserError) as info:
        export_gguf(tmp_path / "mistral", tmp_path / "out")
    assert "mistral" in info.value.title.lower()
    assert "LlamaForCausalLM" in info.value.fix and "convert_hf_to_gguf" in info.value.fix


def test_unknown_type_is_a_user_error(tiny_llama, tmp_path):
    with pytest.raises(UserError) as info:
        export_gguf(tiny_llama, tmp_path, types=("q4_k_m",))
    assert "q4_k_m" in info.value.title
    assert all(kind in info.value.fix for kind in SUPPORTED_TYPES)
    assert not any(tmp_path.iterdir())


def test_unwritable_out_dir_is_a_user_error(tiny_llama, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(UserError) as info:
        export_gguf(tiny_llama, blocker / "gguf")
    assert "cannot write" in info.value.title


def test_missing_weights_and_foreign_tokenizers_are_user_errors(tiny_llama, tmp_path):
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_llama, model_dir)
    spec = json.loads((model_dir / "tokenizer.json").read_text())
    spec["pre_tokenizer"] = {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "always", "split": False}
    (model_dir / "tokenizer.json").write_text(json.dumps(spec))
    with pytest.raises(UserError, match="byte-level BPE"):
        export_gguf(model_dir, tmp_path / "out")
    (model_dir / "model.safetensors").unlink()
    with pytest.raises(UserError, match="safetensors"):
        export_gguf(model_dir, tmp_path / "out")
    assert not any((tmp_path / "out").iterdir())


def test_config_that_disagrees_with_the_weights_is_a_user_error(tiny_llama, tmp_path):
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_llama, model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    config["num_key_value_heads"] = 1  # the weights have 2
    (model_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match=r"k_proj.* num_key_value_heads=1"):
        export_gguf(model_dir, tmp_path / "out")
    assert not any((tmp_path / "out").iterdir())


def fail_after(count: int, error: BaseException):
    """A stand-in for the exporter's tensor loader that fails once ``count`` tensors have been loaded."""
    load, calls = REAL_LOAD, []

    def load_then_fail(tensor):
        calls.append(tensor.name)
        if len(calls) > count:
            raise error
        return load(tensor)

    return load_then_fail


def test_a_failed_export_leaves_no_partial_file(tiny_llama, tmp_path, monkeypatch):
    """A failure mid-file (a full disk, Ctrl-C) removes the temporary file; files finished before it stay."""
    monkeypatch.setattr(gguf_export, "_load", fail_after(4, OSError(28, "No space left on device")))
    with pytest.raises(OSError, match="No space left"):
        export_gguf(tiny_llama, tmp_path, types=("f16",))
    assert list(tmp_path.iterdir()) == []

    tensors_per_file = 29  # 3 blocks of 9, the embedding and the final norm
    monkeypatch.setattr(gguf_export, "_load", fail_after(tensors_per_file + 10, KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        export_gguf(tiny_llama, tmp_path, types=("f32", "q8_0"))
    assert [p.name for p in tmp_path.iterdir()] == ["model-f32.gguf"]
    assert len(read_tensors(tmp_path / "model-f32.gguf")) == tensors_per_file
