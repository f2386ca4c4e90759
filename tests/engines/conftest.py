"""The engine tier: a short legal run of the embedded model, exported three ways, and the reference answers the
engines must reproduce. Built once per session; run with `bash scripts/engine_check.sh`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ENGINES = REPO / ".engines"
PROMPTS = [
    "What is consideration in contract law?",
    "Explain force majeure in one sentence.",
    "What is the difference between a warranty and a condition?",
    "Write a short confidentiality clause.",
]
MAX_TOKENS = 48
TRAIN_STEPS = 12


def engine_python(name: str) -> Path:
    python = ENGINES / name / "bin" / "python"
    if not python.is_file():
        pytest.fail(f"no {name} environment: run bash scripts/engine_envs.sh {name}")
    return python


def llama_python_env() -> dict[str, str]:
    """lora-ft's environment with llama.cpp's binding found in the llama engine's (the set-up a user has when
    llama-cpp-python lives in another environment; the export's quantizer and check run there)."""
    from lora_ft.exports.llama_cpp_tools import LLAMA_PYTHON_ENV

    return {**os.environ, LLAMA_PYTHON_ENV: str(engine_python("llama"))}


def _lora_ft(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "lora_ft", *args], check=True, cwd=REPO, timeout=1800,
                   env=llama_python_env())


@pytest.fixture(scope="session")
def work() -> Path:
    folder = Path(os.environ.get("LORA_FT_ENGINE_WORK", ENGINES / "work"))
    if os.environ.get("LORA_FT_ENGINE_REUSE") == "1" and (folder / "exports.done").is_file():
        return folder  # a developer's rerun: the run and exports of the last session, as they were
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


@pytest.fixture(scope="session")
def legal_run(work) -> Path:
    """The README's legal config on the embedded model, cut to a few steps (the adapter is real, only shorter)."""
    run = work / "legal"
    if (work / "exports.done").is_file():
        return run
    _lora_ft("train", "configs/legal_domain.yaml", "--set", f"output_dir={run}", "--set",
             f"train.max_steps={TRAIN_STEPS}", "--set", "train.eval_before_training=false")
    return run


@pytest.fixture(scope="session")
def exports(legal_run, work) -> dict[str, Path]:
    out = {"peft": work / "peft", "merged": work / "merged", "gguf": work / "gguf"}
    if (work / "exports.done").is_file():
        return out
    _lora_ft("export", str(legal_run), "--format", "peft", "--out", str(out["peft"]))
    _lora_ft("export", str(legal_run), "--format", "merged", "--out", str(out["merged"]))
    _lora_ft("export", str(legal_run), "--format", "gguf", "--gguf-types", "f16,q8_0,q4_k_m", "--out", str(out["gguf"]))
    (work / "exports.done").write_text("")
    return out


def _greedy(model, tokenizer, stop_ids: list[int]) -> list[dict]:
    import torch

    answers = []
    for prompt in PROMPTS:
        inputs = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                               return_tensors="pt", return_dict=True)
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=MAX_TOKENS, do_sample=False, eos_token_id=stop_ids,
                                 pad_token_id=tokenizer.pad_token_id)
        new = out[0][inputs["input_ids"].shape[1]:].tolist()
        stopped = bool(new) and new[-1] in stop_ids
        ids = new[:-1] if stopped else new
        answers.append({"prompt": prompt, "ids": ids, "text": tokenizer.decode(ids, skip_special_tokens=True),
                        "stopped": stopped})
    return answers


@pytest.fixture(scope="session")
def references(exports) -> dict[str, list[dict]]:
    """Greedy answers in float32: transformers + PEFT on the adapter, transformers on the merged model."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter = exports["peft"]
    tokenizer = AutoTokenizer.from_pretrained(adapter)
    stop_ids = json.loads((adapter / "generation_config.json").read_text())["eos_token_id"]
    stop_ids = stop_ids if isinstance(stop_ids, list) else [stop_ids]
    base = json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"]
    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32),
                                      str(adapter)).eval()
    merged = AutoModelForCausalLM.from_pretrained(exports["merged"], dtype=torch.float32).eval()
    result = {"adapter": _greedy(tuned, tokenizer, stop_ids), "merged": _greedy(merged, tokenizer, stop_ids),
              "base": base, "stop_ids": stop_ids}
    (exports["peft"].parent / "references.json").write_text(json.dumps(result, indent=2))
    return result


def record(name: str, figures: dict) -> None:
    """Keep each engine's measured figures (.engines/work/figures-NAME.json) for the report and docs."""
    folder = Path(os.environ.get("LORA_FT_ENGINE_WORK", ENGINES / "work"))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"figures-{name}.json").write_text(json.dumps(figures, indent=2) + "\n")
