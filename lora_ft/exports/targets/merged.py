"""``--format merged``: the adapter folded into the base weights, a plain transformers model for vLLM, TGI or
transformers, checked by loading it in a process where peft cannot be imported."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from lora_ft import console
from lora_ft.exports.checks import write_check
from lora_ft.exports.targets import ExportTarget
from lora_ft.rundir.finished import FinishedRun

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
    return write_check(out_dir, check)


def add_merge_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of a merge (``lora-ft merge`` and this target)."""
    parser.add_argument("--dtype", choices=["bfloat16", "float16", "float32"],
                        help="dtype of the merged weights (default float32, which answers like base + adapter; "
                        "bfloat16 halves the size, see docs/serving.md)")
    parser.add_argument("--into", choices=["original", "dequantized"], default="original",
                        help="for QLoRA runs: merge into the original 16-bit base (default) or into the "
                        "dequantized NF4 weights the adapter was trained against (see docs/serving.md)")


TARGET = ExportTarget("merged", "one merged model for transformers, vLLM or TGI",
                      lambda run, out, args: export_merged(run, out, dtype=args.dtype, into=args.into,
                                                           base=args.base),
                      add_merge_arguments)
