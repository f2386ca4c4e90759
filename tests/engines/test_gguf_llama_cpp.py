"""llama.cpp (llama-cpp-python, in its own environment) reads what llama.cpp's converter writes for lora-ft as
transformers reads the Hugging Face weights: for every family, the same logits for the same token ids from the
f16 file; for the embedded model's tokenizer, the same tokens for the same text; and the real embedded model,
converted to q8_0, answers sensibly."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from lora_ft.exports.llama_cpp_tools import convert
from tests.engines.conftest import engine_python
from tests.model_families import FAMILIES, build_family_model, converter_tokenizers

pytestmark = pytest.mark.engines
TOKEN_IDS = [1, 5, 40, 77, 120, 250, 399, 2, 3, 7]
# f16 weights against float32 ones: on the tiny llama (logits' std about 0.16) llama.cpp's largest difference
# measured 3.0e-4; other families' measured differences are in docs/families.md; the bound is about 3x the largest
F16_LOGITS_ATOL = 2e-3


def llama_cpp(model: Path, steps: list[dict], tmp_path: Path, logits_all: bool = False) -> list:
    request = tmp_path / f"request-{model.stem}.json"
    request.write_text(json.dumps({"model": str(model), "logits_all": logits_all, "steps": steps}))
    result = subprocess.run([str(engine_python("llama")), str(Path(__file__).with_name("llama_probe.py")),
                             str(request)], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])["results"]


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory) -> dict[str, Path]:
    return converter_tokenizers(tmp_path_factory.mktemp("tokenizers"))


def hf_logits(model_dir: Path, ids: list[int]) -> np.ndarray:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager").eval()
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()


@pytest.mark.parametrize("family", list(FAMILIES))
def test_llama_cpp_computes_each_familys_f16_file_like_transformers(family, tokenizers, tmp_path):
    tokenizer = tokenizers[family]
    model_dir = build_family_model(family, tmp_path / "model", tokenizer)
    path = convert(model_dir, tmp_path / "model-f16.gguf", "f16")
    (logits,) = llama_cpp(path, [{"logits": TOKEN_IDS}], tmp_path, logits_all=True)
    expected = hf_logits(model_dir, TOKEN_IDS)
    difference = float(np.abs(np.asarray(logits) - expected).max())
    print(f"{family}: max |logit difference| {difference:.2e} (logits' std {expected.std():.3f})")
    np.testing.assert_allclose(np.asarray(logits), expected, atol=F16_LOGITS_ATOL, rtol=0)


def test_llama_cpp_tokenizes_the_embedded_tokenizer_like_transformers(tokenizers, tmp_path):
    from transformers import AutoTokenizer

    model_dir = build_family_model("llama", tmp_path / "model", tokenizers["embedded"])
    path = convert(model_dir, tmp_path / "model-f16.gguf", "f16")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    text = ("<|im_start|>user\nRent: 12345 USD,\n\n   due   2024-01-01!! It's   the tenant's  (3.5%) share\t\tof "
            "1,000,000.<|im_end|>\n")
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    tokens, back = llama_cpp(path, [{"tokenize": text, "special": True}, {"detokenize": ids, "special": True}],
                             tmp_path)
    assert tokens == ids and back == text


def test_the_embedded_model_answers_in_llama_cpp(tmp_path):
    """The real SmolLM2-135M-Instruct, exported to q8_0: llama.cpp tokenizes like transformers and answers."""
    from transformers import AutoTokenizer

    from lora_ft.embedded import ensure_embedded_model

    model_dir = ensure_embedded_model()
    path = convert(model_dir, tmp_path / "model-q8_0.gguf", "q8_0")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    text = "Section 12(b): the tenant's 3,500 USD deposit — refundable within 30 days.\n\n  Indemnify?"
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is a contract?"}],
                                           tokenize=False, add_generation_prompt=True)
    tokens, answer = llama_cpp(path, [{"tokenize": text},
                                      {"complete": prompt, "max_tokens": 48, "stop": ["<|im_end|>"]}], tmp_path)
    assert tokens == tokenizer(text, add_special_tokens=False)["input_ids"]
    assert "contract" in answer["text"].lower() and "agreement" in answer["text"].lower()
