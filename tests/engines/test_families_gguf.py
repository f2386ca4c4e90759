"""Every family our users tune, through llama.cpp: a tiny random-weight model of each (built from its config class,
with a tokenizer llama.cpp's converter recognises) trains two steps, exports as GGUF through llama.cpp's own
converter and quantizer, and each file loads in llama.cpp, answers a chat message with the template written into
it, and stops where the run's end-of-turn token says."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import CHATML, CORPUS, legal_rows, write_config, write_jsonl
from tests.engines.conftest import llama_python_env
from tests.model_families import FAMILIES, SENTENCEPIECE_FAMILIES, build_family_model, build_sentencepiece_tokenizer

pytestmark = pytest.mark.engines
TYPES = ("f16", "q8_0", "q4_k_m")
# llama.cpp's architecture for each family, as its converter writes it (Mistral is a Llama layout)
LLAMA_CPP_ARCH = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "gemma2": "gemma2",
                  "gemma3": "gemma3", "phi3": "phi3", "gpt2": "gpt2"}


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory) -> dict[str, Path]:
    from lora_ft.embedded import ensure_embedded_model

    spm = build_sentencepiece_tokenizer(tmp_path_factory.mktemp("spm-tokenizer"), CORPUS, CHATML)
    return {"embedded": ensure_embedded_model(), "sentencepiece": spm}


def _lora_ft(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lora_ft", *args], cwd=cwd, env=llama_python_env(),
                          capture_output=True, text=True, timeout=1200)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_exports_to_gguf_and_answers_in_llama_cpp(family, tokenizers, tmp_path):
    from gguf import GGUFReader

    tokenizer = tokenizers["sentencepiece" if family in SENTENCEPIECE_FAMILIES else "embedded"]
    model = build_family_model(family, tmp_path / "model", tokenizer)
    data = tmp_path / "data"
    data.mkdir()
    write_jsonl(data / "train.jsonl", legal_rows(8))
    write_jsonl(data / "eval.jsonl", legal_rows(2, 100))
    config = write_config(tmp_path / "run.yaml", model, data, extra="  eval_before_training: false\n")
    trained = _lora_ft("train", str(config), "--set", "train.max_steps=2", cwd=tmp_path)
    assert trained.returncode == 0, trained.stdout[-2000:] + trained.stderr[-2000:]
    out = tmp_path / "gguf"
    exported = _lora_ft("export", str(tmp_path / "run"), "--format", "gguf", "--gguf-types", ",".join(TYPES),
                        "--out", str(out), cwd=tmp_path)
    assert exported.returncode == 0, exported.stdout[-2000:] + exported.stderr[-3000:]

    check = json.loads((out / "export_check.json").read_text())
    assert check["passed"] is True and check["stops_at_end_of_turn"] is True, check
    assert check["finish_reason"] in ("stop", "length") and isinstance(check["answer"], str)
    assert check["files"] == [f"model-{t}.gguf" for t in TYPES]
    for name in TYPES:
        reader = GGUFReader(str(out / f"model-{name}.gguf"))
        assert reader.get_field("general.architecture").contents() == LLAMA_CPP_ARCH[family]
        assert "<|im_start|>" in reader.get_field("tokenizer.chat_template").contents()
    quantized = GGUFReader(str(out / "model-q4_k_m.gguf"))
    assert {t.tensor_type.name for t in quantized.tensors} - {"F32", "F16"}, "q4_k_m holds quantized tensors"
    gguf = json.loads((out / "parity.json").read_text())["gguf"]
    by_type = {row["type"]: row for row in gguf["files"]}
    for name in ("q8_0", "q4_k_m"):  # compared with f16 over f16's greedy answers: figures, not a bound
        assert by_type[name]["positions"] > 0 and 0.0 <= by_type[name]["top1_agreement"] <= 1.0
        assert by_type[name]["answered"] is True
    readme = (out / "README.md").read_text()
    assert "| q4_k_m | model-q4_k_m.gguf |" in readme and "FROM ./model-" in (out / "Modelfile").read_text()
    assert not any(p.name.startswith(".") or p.suffix == ".eot" for p in out.iterdir()), sorted(os.listdir(out))
