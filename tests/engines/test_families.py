"""Every family our users tune, served: a tiny random-weight model of each (built from its config class, heads of
64 values as the engines' CPU kernels need, with a tokenizer llama.cpp's converter recognises) trains two steps
through lora-ft, then
- exports as GGUF through llama.cpp's own converter and quantizer: each file loads in llama.cpp, answers a chat
  message with the template written into it, stops where the run's end-of-turn token says, and is compared with
  the f16 file (figures in parity.json);
- exports as a merged model that vLLM (its CPU build) loads and answers greedily, token for token as transformers
  answers on the same folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import legal_rows, write_config, write_jsonl
from tests.engines.conftest import engine_python, llama_python_env, record
from tests.model_families import FAMILIES, build_family_model, converter_tokenizers

pytestmark = pytest.mark.engines
TYPES = ("f16", "q4_k_m")  # q8_0 is the legal run's (test_llama_cpp.py)
# llama.cpp's architecture for each family, as its converter writes it (Mistral is a Llama layout)
LLAMA_CPP_ARCH = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "gemma2": "gemma2",
                  "gemma3": "gemma3", "phi3": "phi3", "gpt2": "gpt2"}
PROMPTS = ["What is consideration in contract law?", "Explain force majeure in one sentence."]
ANSWER_TOKENS = 12


def _lora_ft(*args: str, cwd: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "lora_ft", *args], cwd=cwd, env=llama_python_env(),
                          capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, f"lora-ft {args[0]}:\n{done.stdout[-2500:]}\n{done.stderr[-2500:]}"


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory) -> dict[str, Path]:
    return converter_tokenizers(tmp_path_factory.mktemp("tokenizers"))


@pytest.fixture(scope="module")
def family_runs(tokenizers, tmp_path_factory, work):
    """Each family trained and exported once (merged and GGUF), on first use. (``work``: the tier's figures
    folder is made, and emptied of the last session's, before the first figure is recorded.)"""
    done: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in done:
            root = tmp_path_factory.mktemp(family)
            tokenizer = tokenizers[family]
            model = build_family_model(family, root / "model", tokenizer, wide=True)
            data = root / "data"
            data.mkdir()
            write_jsonl(data / "train.jsonl", legal_rows(8))
            write_jsonl(data / "eval.jsonl", legal_rows(2, 100))
            config = write_config(root / "run.yaml", model, data, extra="  eval_before_training: false\n")
            _lora_ft("train", str(config), "--set", "train.max_steps=2", cwd=root)
            _lora_ft("export", str(root / "run"), "--format", "merged", "--out", str(root / "merged"), cwd=root)
            _lora_ft("export", str(root / "run"), "--format", "gguf", "--gguf-types", ",".join(TYPES), "--out",
                     str(root / "gguf"), cwd=root)
            done[family] = root
        return done[family]

    return get


@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_exports_to_gguf_and_answers_in_llama_cpp(family, family_runs):
    from gguf import GGUFReader

    out = family_runs(family) / "gguf"
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
    q4 = by_type["q4_k_m"]  # compared with f16 over f16's greedy answers: figures, not a bound
    assert q4["positions"] > 0 and 0.0 <= q4["top1_agreement"] <= 1.0 and q4["answered"] is True
    record(f"family-{family}-gguf", gguf)
    readme = (out / "README.md").read_text()
    assert "| q4_k_m | model-q4_k_m.gguf |" in readme and "FROM ./model-" in (out / "Modelfile").read_text()
    assert not any(p.name.startswith(".") or p.suffix == ".eot" for p in out.iterdir()), sorted(os.listdir(out))


def _transformers_answers(merged: Path) -> list[list[int]]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(merged)
    model = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).eval()
    answers = []
    for prompt in PROMPTS:
        inputs = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                               return_tensors="pt", return_dict=True)
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=ANSWER_TOKENS, do_sample=False,
                                 eos_token_id=model.generation_config.eos_token_id,
                                 pad_token_id=tokenizer.pad_token_id)
        answers.append(out[0][inputs["input_ids"].shape[1]:].tolist())
    return answers


@pytest.fixture(scope="module")
def vllm_answers(family_runs, tmp_path_factory) -> dict:
    """One vLLM process loads every family's merged export in turn (its start-up is paid once)."""
    work = tmp_path_factory.mktemp("vllm")
    request = work / "request.json"
    request.write_text(json.dumps({"models": [{"name": f, "path": str(family_runs(f) / "merged")} for f in FAMILIES],
                                   "prompts": PROMPTS, "max_tokens": ANSWER_TOKENS}))
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_LOGGING_LEVEL": "WARNING",
           "VLLM_CACHE_ROOT": str(work / "vllm-cache")}
    done = subprocess.run([str(engine_python("vllm")), str(Path(__file__).with_name("vllm_answers.py")),
                           str(request)], capture_output=True, text=True, timeout=2400, env=env)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_merged_export_answers_in_vllm_like_transformers(family, family_runs, vllm_answers):
    merged = family_runs(family) / "merged"
    served = vllm_answers["models"][family]
    expected = _transformers_answers(merged)
    got = [a["ids"] for a in served["answers"]]
    record(f"family-{family}-vllm", {"vllm": vllm_answers["version"], "load_seconds": served["load_seconds"],
                                     "vllm_ids": got, "transformers_ids": expected})
    assert all(a["finish_reason"] in ("stop", "length") for a in served["answers"])
    assert got == expected, f"{family}: vLLM {got} vs transformers {expected}"
