"""``--format peft``: the adapter alone, for vLLM's multi-LoRA serving (checked against vLLM's documented rules)
and transformers + PEFT (loaded and asked one question)."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from lora_ft import console
from lora_ft.errors import Problem, UserError
from lora_ft.exports.checks import CHECK_PROMPT, write_check
from lora_ft.exports.targets import ExportTarget
from lora_ft.files import staged_directory, write_text_atomic
from lora_ft.rundir.finished import FinishedRun, locate_base
from lora_ft.tool_template import VLLM_TOOL_FLAGS, is_hermes, serving_note

VLLM_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # the values vLLM's --max-lora-rank accepts
VLLM_TARGETS = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "qkv_proj",
                "gate_up_proj", "c_attn", "c_proj", "c_fc", "embed_tokens", "lm_head"}


def vllm_problems(adapter_dir: Path) -> list[Problem]:
    """What would stop vLLM's LoRA loader from accepting this adapter (its documented requirements)."""
    from safetensors import safe_open

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
    template = run.adapter_dir / "chat_template.jinja"  # the run's, copied into the export as it is
    hermes = template.is_file() and is_hermes(template.read_text(encoding="utf-8"))
    tool_flags = f" \\\n  {VLLM_TOOL_FLAGS}" if hermes else ""
    return f"""# {run.run_dir.name}: LoRA adapter for {run.base_name}

Exported by `lora-ft export {run.run_dir} --format peft`. Base model: `{base_for_serving}`.
Answers end with `{run.end_of_turn}`: stop generation there (the tokenizer and chat template here do).

## vLLM

```bash
vllm serve {base_for_serving} --enable-lora --max-lora-rank {rank} \\
  --lora-modules {run.run_dir.name}={adapter_dir.resolve()} \\
  --chat-template {adapter_dir.resolve()}/chat_template.jinja{tool_flags}
```

Answers in float32 (`--dtype float32`) match the tuned model exactly; in bfloat16 they drift after some tokens.

Request the model `{run.run_dir.name}` from the OpenAI-compatible API (`/v1/chat/completions`).
{serving_note(hermes)}
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
        write_check(staging, check)
    return check


TARGET = ExportTarget("peft", "the adapter for vLLM (--enable-lora) or transformers + PEFT",
                      lambda run, out, args: export_peft(run, out, base=args.base))
