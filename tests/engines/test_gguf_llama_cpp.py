"""llama.cpp (llama-cpp-python, in its own environment) reads lora-ft's GGUF files of tiny models as transformers
reads the Hugging Face weights: the same tokens for the same text under each supported pre-tokenizer, the same
logits, and text generated from the quantized file. The embedded model, exported to q8_0, answers sensibly."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from lora_ft.exports import gguf_vocab
from lora_ft.exports.gguf_writer import export_gguf
from tests.engines.conftest import engine_python
from tests.test_gguf_export import TOKEN_IDS, hf_logits, metadata

pytestmark = pytest.mark.engines
# f16 weights against float32 ones: on these tiny models (logits' std about 0.16) llama.cpp's largest difference
# measured 3.0e-4 (transformers reading the same file: 2.2e-4); the bound is about 3x that
F16_LOGITS_ATOL = 1e-3


def llama_cpp(model: Path, steps: list[dict], tmp_path: Path, logits_all: bool = False) -> list:
    request = tmp_path / f"request-{model.stem}.json"
    request.write_text(json.dumps({"model": str(model), "logits_all": logits_all, "steps": steps}))
    result = subprocess.run([str(engine_python("llama")), str(Path(__file__).with_name("llama_probe.py")),
                             str(request)], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])["results"]


@pytest.fixture(scope="module")
def exported(tiny_llama, tmp_path_factory) -> dict[str, Path]:
    paths = export_gguf(tiny_llama, tmp_path_factory.mktemp("gguf"), types=("f16", "q8_0"))
    return {p.name.removeprefix("model-").removesuffix(".gguf"): p for p in paths}


def test_llama_cpp_tokenizes_and_computes_like_transformers(exported, tiny_llama, chat_tokenizer, tmp_path):
    text = "<|im_start|>user\nWhat is a contract? 12345 tenants' rent!<|im_end|>\n"
    ids = chat_tokenizer(text, add_special_tokens=False)["input_ids"]
    tokens, back, logits = llama_cpp(exported["f16"], [{"tokenize": text, "special": True},
                                                       {"detokenize": ids, "special": True},
                                                       {"logits": TOKEN_IDS}], tmp_path, logits_all=True)
    assert tokens == ids and back == text
    np.testing.assert_allclose(np.asarray(logits), hf_logits(tiny_llama, TOKEN_IDS), atol=F16_LOGITS_ATOL, rtol=0)


def test_llama_cpp_generates_from_the_q8_0_file(exported, tmp_path):
    (completion,) = llama_cpp(exported["q8_0"], [{"complete": "<|im_start|>user\nhello<|im_end|>\n"
                                                              "<|im_start|>assistant\n", "max_tokens": 5}], tmp_path)
    assert completion["completion_tokens"] >= 1


def test_llama_cpp_runs_the_gpt2_export(tiny_gpt2, tmp_path):
    (path,) = export_gguf(tiny_gpt2, tmp_path, types=("f16",))
    (logits,) = llama_cpp(path, [{"logits": TOKEN_IDS}], tmp_path, logits_all=True)
    np.testing.assert_allclose(np.asarray(logits), hf_logits(tiny_gpt2, TOKEN_IDS), atol=F16_LOGITS_ATOL, rtol=0)


def with_pre_tokenizer(model_dir: Path, target: Path, style: str) -> Path:
    """A copy of ``model_dir`` whose tokenizer splits text the SmolLM way (digits one by one) or the Llama 3 way."""
    import shutil

    from tokenizers import Regex, Tokenizer, pre_tokenizers

    shutil.copytree(model_dir, target)
    tokenizer = Tokenizer.from_file(str(target / "tokenizer.json"))
    if style == "smollm":
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)])
    else:
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(gguf_vocab._LLAMA3_REGEX), behavior="isolated", invert=False),
             pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tokenizer.save(str(target / "tokenizer.json"))
    return target


@pytest.mark.parametrize(("style", "pre"), [("smollm", "smollm"), ("llama3", "llama-bpe")])
def test_llama_cpp_splits_text_like_each_supported_pre_tokenizer(tiny_llama, tmp_path, style, pre):
    from transformers import AutoTokenizer

    model_dir = with_pre_tokenizer(tiny_llama, tmp_path / "model", style)
    (path,) = export_gguf(model_dir, tmp_path / "out", types=("f16",))
    assert metadata(path)["tokenizer.ggml.pre"] == pre
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    # Each of gpt-2, smollm and llama-bpe splits this text differently with this vocabulary (checked by hand).
    text = ("Rent: 12345 USD,\n\n   due   2024-01-01!! It's   the tenant's  (3.5%) share\t\tof 1,000,000. "
            "hello world 0123456789 THE TENANT'S")
    (tokens,) = llama_cpp(path, [{"tokenize": text}], tmp_path)
    assert tokens == tokenizer(text, add_special_tokens=False)["input_ids"]


def test_the_embedded_model_answers_in_llama_cpp(tmp_path):
    """The real SmolLM2-135M-Instruct, exported to q8_0: llama.cpp tokenizes like transformers and answers."""
    from transformers import AutoTokenizer

    from lora_ft.embedded import ensure_embedded_model

    model_dir = ensure_embedded_model()
    (path,) = export_gguf(model_dir, tmp_path, types=("q8_0",))
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    text = "Section 12(b): the tenant's 3,500 USD deposit — refundable within 30 days.\n\n  Indemnify?"
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is a contract?"}],
                                           tokenize=False, add_generation_prompt=True)
    tokens, answer = llama_cpp(path, [{"tokenize": text},
                                      {"complete": prompt, "max_tokens": 48, "stop": ["<|im_end|>"]}], tmp_path)
    assert tokens == tokenizer(text, add_special_tokens=False)["input_ids"]
    assert "contract" in answer["text"].lower() and "agreement" in answer["text"].lower()
