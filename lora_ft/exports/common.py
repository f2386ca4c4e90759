"""Exporting a finished run for serving: a PEFT adapter for vLLM, a merged model, or GGUF for llama.cpp / Ollama.

Every export ends with a check that loads the result the way its target does and generates an answer to one
prompt; the check's result is printed and written next to the export as ``export_check.json``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from safetensors import safe_open

from lora_ft.errors import Problem, UserError
from lora_ft.files import staged_directory, write_text_atomic
from lora_ft.rundir.finished import FinishedRun, locate_base
from lora_ft import console

FORMATS = ("peft", "merged", "gguf")
CHECK_FILE = "export_check.json"
CHECK_PROMPT = "What is consideration in contract law?"
VLLM_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # the values vLLM's --max-lora-rank accepts
VLLM_TARGETS = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "qkv_proj",
                "gate_up_proj", "c_attn", "c_proj", "c_fc", "embed_tokens", "lm_head"}


def vllm_problems(adapter_dir: Path) -> list[Problem]:
    """What would stop vLLM's LoRA loader from accepting this adapter (its documented requirements)."""
    problems = []
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    where = str(adapter_dir / "adapter_config.json")
    if config.get("peft_type") != "LORA":
        problems.append(Problem(f"peft_type is {config.get('peft_type')!r}, vLLM loads LORA only", where))
    if config.get("r", 0) > VLLM_RANKS[-1]:
        problems.append(Problem(f"rank {config['r']} is above vLLM's maximum {VLLM_RANKS[-1]}", where,
                                "train with a smaller lora.r"))
    if config.get("bias", "none") != "none":
        problems.append(Problem(f"bias is {config['bias']!r}; vLLM supports bias 'none' only", where,
                                "train with lora.bias: none"))
    if config.get("modules_to_save"):
        problems.append(Problem(f"modules_to_save {config['modules_to_save']} is not supported by vLLM", where,
                                "train without lora.modules_to_save, or serve the merged model"))
    if config.get("use_dora"):
        problems.append(Problem("DoRA adapters are not supported by vLLM", where, "serve the merged model"))
    targets = config.get("target_modules") or []
    targets = [targets] if isinstance(targets, str) else targets
    # vLLM matches a target by its last name part: "model.layers.0.self_attn.q_proj" is a q_proj (PEFT writes full
    # names when a model has few layers)
    unknown = sorted({t.rsplit(".", 1)[-1] for t in targets} - VLLM_TARGETS)
    if unknown:
        problems.append(Problem(f"target modules {unknown} are not LoRA layers vLLM knows", where,
                                "serve the merged model"))
    weights = adapter_dir / "adapter_model.safetensors"
    if not weights.is_file():
        problems.append(Problem("no adapter_model.safetensors", str(adapter_dir)))
    else:
        with safe_open(str(weights), "pt") as fh:
            extra = [k for k in fh.keys() if "lora_A" not in k and "lora_B" not in k]
        if extra:
            problems.append(Problem(f"the weights hold {len(extra)} non-LoRA tensors (e.g. {extra[0]})",
                                    str(weights), "vLLM rejects full weights inside an adapter"))
    return problems


def vllm_rank_flag(rank: int) -> int:
    return next(r for r in VLLM_RANKS if r >= rank)


def _serving_readme(run: FinishedRun, adapter_dir: Path, base_for_serving: str) -> str:
    rank = vllm_rank_flag(run.lora_rank)
    return f"""# {run.run_dir.name}: LoRA adapter for {run.base_name}

Exported by `lora-ft export {run.run_dir} --format peft`. Base model: `{base_for_serving}`.
Answers end with `{run.end_of_turn}`: stop generation there (the tokenizer and chat template here do).

## vLLM

```bash
vllm serve {base_for_serving} --enable-lora --max-lora-rank {rank} \\
  --lora-modules {run.run_dir.name}={adapter_dir.resolve()}
```

Request the model `{run.run_dir.name}` from the OpenAI-compatible API (`/v1/chat/completions`).

## transformers + PEFT

```python
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

base = AutoModelForCausalLM.from_pretrained("{base_for_serving}")
model = PeftModel.from_pretrained(base, "{adapter_dir.resolve()}")
tokenizer = AutoTokenizer.from_pretrained("{adapter_dir.resolve()}")
messages = [{{"role": "user", "content": "{CHECK_PROMPT}"}}]
inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
print(tokenizer.decode(model.generate(**inputs, max_new_tokens=200)[0][inputs["input_ids"].shape[1]:],
                       skip_special_tokens=True))
```
"""


def _write_check(directory: Path, check: dict) -> dict:
    write_text_atomic(directory / CHECK_FILE, json.dumps(check, indent=2) + "\n")
    status = {True: "passed", False: "FAILED",
              None: "NOT RUN in an engine (the file is readable; no answer was generated)"}[check["passed"]]
    console.say(f"export check ({check['loader']}): {status}")
    console.say(f"  prompt: {check['prompt']}")
    if check.get("answer") is not None:
        console.say(f"  answer: {check['answer'][:300]}")
    if check.get("note"):
        console.say(f"  note: {check['note']}")
    return check


def export_peft(run: FinishedRun, out_dir: Path, base: str | None = None) -> dict:
    from lora_ft import inference

    problems = vllm_problems(run.adapter_dir)
    if problems:
        raise UserError("this adapter would not load in vLLM", problems,
                        fix="retrain with the listed settings, or export --format merged")
    base_path = locate_base(run, base)
    base_for_serving = run.upstream if run.upstream and not Path(base_path).is_dir() else base_path
    with staged_directory(out_dir) as staging:
        for item in run.adapter_dir.iterdir():
            if item.is_file():
                shutil.copy2(item, staging / item.name)
        config_file = staging / "adapter_config.json"
        adapter_config = json.loads(config_file.read_text())
        adapter_config["base_model_name_or_path"] = base_for_serving
        write_text_atomic(config_file, json.dumps(adapter_config, indent=2) + "\n")
        write_text_atomic(staging / "README.md", _serving_readme(run, out_dir, base_for_serving))
        console.say("loading the exported adapter with PEFT on its base model ...")
        exported = FinishedRun(run_dir=run.run_dir, adapter_dir=staging, manifest=run.manifest, config=run.config)
        model = inference.load_tuned(exported, base)
        tokenizer = inference.load_tokenizer(exported)
        answer, stopped = inference.generate(model, tokenizer, run, [{"role": "user", "content": CHECK_PROMPT}],
                                             max_new_tokens=120)
        check = {"format": "peft", "loader": "transformers + PEFT (vLLM requirements checked)", "prompt": CHECK_PROMPT,
                 "answer": answer, "stopped_at_end_of_turn": stopped, "passed": True,
                 "vllm_max_lora_rank": vllm_rank_flag(run.lora_rank), "checked_at": time.time()}
        _write_check(staging, check)
    return check


CHECK_WITHOUT_PEFT = r"""
import json, sys
sys.modules["peft"] = None  # transformers alone: peft cannot be imported in this process
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
directory, prompt, max_new = sys.argv[1], sys.argv[2], int(sys.argv[3])
tokenizer = AutoTokenizer.from_pretrained(directory)
model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
inputs = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                       return_tensors="pt", return_dict=True)
with torch.no_grad():
    out = model.generate(**inputs, max_new_tokens=max_new, do_sample=False)
new = out[0][inputs["input_ids"].shape[1]:].tolist()
stops = model.generation_config.eos_token_id
stops = stops if isinstance(stops, list) else [stops]
print(json.dumps({"answer": tokenizer.decode(new, skip_special_tokens=True).strip(),
                  "stopped_at_end_of_turn": bool(new) and new[-1] in stops}))
"""


def generate_without_peft(model_dir: Path, prompt: str, max_new_tokens: int = 40) -> dict:
    """Greedy answer from a merged model loaded by transformers in a fresh process where peft is not importable."""
    result = subprocess.run([sys.executable, "-c", CHECK_WITHOUT_PEFT, str(model_dir), prompt, str(max_new_tokens)],
                            capture_output=True, text=True, timeout=1800)
    if result.returncode != 0:
        tail = result.stderr.strip().splitlines()[-1:] or ["(no output)"]
        return {"answer": "", "stopped_at_end_of_turn": False, "error": tail[0]}
    return json.loads(result.stdout.strip().splitlines()[-1])


def export_merged(run: FinishedRun, out_dir: Path, *, dtype: str | None = None, into: str = "original",
                  base: str | None = None) -> dict:
    from lora_ft.exports.merging import merge_run

    report = merge_run(run, out_dir, dtype=dtype, into=into, base=base)
    console.say("loading the merged model with transformers alone (peft not importable) ...")
    reference = report.answers[0]["reference"]
    got = generate_without_peft(out_dir, report.answers[0]["prompt"])
    check = {"format": "merged", "loader": "transformers without peft", "prompt": report.answers[0]["prompt"],
             "answer": got["answer"], "reference_answer": reference,
             "same_greedy_answer_as_base_plus_adapter": got["answer"] == reference,
             "stopped_at_end_of_turn": got["stopped_at_end_of_turn"],
             "passed": "error" not in got and got["answer"] == reference,
             "parity_within_tolerance": report.within_tolerance, "parity_mean_kl": report.mean_kl,
             "checked_at": time.time()}
    if "error" in got:
        check["note"] = got["error"]
    return _write_check(out_dir, check)


def export_gguf(run: FinishedRun, out_dir: Path, *, types: tuple[str, ...] = ("f16", "q8_0"),
                base: str | None = None) -> dict:
    from lora_ft.exports import gguf_writer as gguf_export
    from lora_ft.exports.merging import merge_run

    gguf_export.check_types(types)  # bad input is refused before the merge, not after it
    base_config = Path(locate_base(run, base)) / "config.json"
    if base_config.is_file():
        gguf_export.architecture(json.loads(base_config.read_text(encoding="utf-8")), base_config.parent)
    with staged_directory(out_dir) as staging:
        merged_dir = staging / "merged-hf"
        report = merge_run(run, merged_dir, dtype="float32", base=base)
        files = gguf_export.export_gguf(merged_dir, staging, types=types)
        tokenizer_template = (merged_dir / "chat_template.jinja")
        template = tokenizer_template.read_text() if tokenizer_template.is_file() else ""
        system = run.config.data.system_prompt
        smallest = min(files, key=lambda p: p.stat().st_size)
        gguf_export.write_modelfile(smallest, staging, template, [run.end_of_turn], system)
        write_text_atomic(staging / "parity.json", (merged_dir / "parity.json").read_text())
        shutil.rmtree(merged_dir)
        check = check_gguf(smallest, run, report.answers[0]["prompt"], report.answers[0]["reference"])
        check["files"] = [p.name for p in files]
        _write_check(staging, check)
    return check


def check_gguf(path: Path, run: FinishedRun, prompt: str, reference: str) -> dict:
    """Load a GGUF file in llama.cpp (llama-cpp-python) and generate; without it, say how to get it."""
    try:
        import llama_cpp
    except ImportError:
        from gguf import GGUFReader

        reader = GGUFReader(str(path))
        # Readable is not proven: without llama.cpp nothing was generated, and the check says so.
        return {"format": "gguf", "loader": "gguf reader only (llama-cpp-python not installed)", "prompt": prompt,
                "answer": None, "passed": None if len(reader.tensors) > 0 else False,
                "tensors": len(reader.tensors),
                "note": "not loaded in llama.cpp: install the check with pip install 'lora-ft[gguf]' (builds "
                "llama-cpp-python), then export again",
                "checked_at": time.time()}
    console.say(f"loading {path.name} in llama.cpp ...")
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=512, verbose=False, seed=0)
    out = llm.create_chat_completion(messages=[{"role": "user", "content": prompt}], max_tokens=40, temperature=0.0)
    answer = out["choices"][0]["message"]["content"].strip()
    return {"format": "gguf", "loader": f"llama.cpp (llama-cpp-python {llama_cpp.__version__})", "prompt": prompt,
            "answer": answer, "reference_answer": reference, "finish_reason": out["choices"][0]["finish_reason"],
            "passed": bool(answer), "checked_at": time.time()}
