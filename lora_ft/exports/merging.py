"""Merging an adapter into a full-precision copy of its base, with a parity check.

The adapter is never merged into 4-bit weights: rounding the merged sum back to NF4 would throw most of the
update away. For a QLoRA run there are two honest choices:

- ``original`` (default): merge into the base's original 16-bit weights. This is what serving engines load, and
  what a later re-quantization starts from; the adapter was trained against the NF4-rounded weights, so the merged
  model differs slightly from the trained one. The parity report measures by how much (KL divergence, greedy
  answers).
- ``dequantized``: merge into the NF4 weights dequantized to 16-bit: exactly the weights the adapter was trained
  against, so the merged model matches the trained one closely, at the price of carrying the 4-bit rounding error
  into a 16-bit checkpoint.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from lora_ft.errors import UserError
from lora_ft.files import check_output_dir_free, staged_directory, write_text_atomic
from lora_ft.rundir.finished import FinishedRun, locate_base
from lora_ft import console

PARITY_PROMPTS = [
    "What is consideration in contract law?",
    "Explain force majeure in one sentence.",
    "Write a short confidentiality clause.",
    "What is the difference between a warranty and a condition?",
]
PARITY_FILE = "parity.json"
SENTENCEPIECE_FILE = "tokenizer.model"
# Float LoRA merged into float32 weights must agree to this; 16-bit merges and QLoRA runs are measured by KL and
# greedy answers (16-bit rounding alone moves logits by about 1e-2).
FLOAT32_MAX_ABS_LOGIT_DIFF = 1e-3
SIXTEEN_BIT_MAX_MEAN_KL = 1e-2
# The merged model's weights are saved in float32 unless asked otherwise: rounded to bfloat16, the legal run's
# merged model answered like base + adapter on 1 of 4 prompts and once did not stop where it stops (docs/serving.md).
DEFAULT_MERGED_DTYPE = "float32"


@dataclass
class ParityReport:
    merged_dtype: str
    merged_into: str  # "original 16-bit weights", "dequantized NF4 weights", "float weights"
    reference: str
    prompts: int
    max_abs_logit_diff: float = 0.0
    mean_kl: float = 0.0
    top1_agreement: float = 1.0
    greedy_answers_match: int = 0
    stops_match: int = 0  # prompts where the merged model stops at the end of turn exactly when the reference does
    tolerance: str = ""
    within_tolerance: bool | None = True  # None: measured and reported, no bound applies
    answers: list[dict] = field(default_factory=list)

    def lines(self) -> list[str]:
        verdict = {True: "within tolerance", False: "OUTSIDE tolerance", None: "reported"}[self.within_tolerance]
        return [
            f"parity: merged ({self.merged_dtype} weights into {self.merged_into}, float32 compute) vs "
            f"{self.reference}, "
            f"{self.prompts} prompts",
            f"  max |logit diff| {self.max_abs_logit_diff:.2e}   mean KL {self.mean_kl:.2e}   "
            f"next-token agreement {self.top1_agreement:.1%}",
            f"  greedy answers identical: {self.greedy_answers_match}/{self.prompts}   stops where the reference "
            f"stops: {self.stops_match}/{self.prompts}   ({self.tolerance}: {verdict})",
        ]


def _prompt_batch(tokenizer, prompts: list[str]):
    return [tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                          return_tensors="pt", return_dict=True) for p in prompts]


def _greedy(model, tokenizer, inputs, stop_ids: list[int], max_new_tokens: int = 40) -> tuple[str, bool]:
    """The greedy answer, and whether it ended on a stop token (not at ``max_new_tokens``)."""
    import torch

    with torch.no_grad():
        out = model.generate(**{k: v.to(model.device) for k, v in inputs.items()}, max_new_tokens=max_new_tokens,
                             do_sample=False, eos_token_id=stop_ids, pad_token_id=tokenizer.pad_token_id)
    new = out[0][inputs["input_ids"].shape[1]:].tolist()
    return tokenizer.decode(new, skip_special_tokens=True).strip(), bool(new) and new[-1] in stop_ids


def model_outputs(model, tokenizer, stop_ids: list[int], prompts: list[str] = PARITY_PROMPTS) -> list[dict]:
    """Each prompt's logits (rendered with the chat template) and greedy answer."""
    import torch

    outputs = []
    for prompt, inputs in zip(prompts, _prompt_batch(tokenizer, prompts)):
        with torch.no_grad():
            logits = model(**{k: v.to(model.device) for k, v in inputs.items()}).logits.float().cpu()
        answer, stopped = _greedy(model, tokenizer, inputs, stop_ids)
        outputs.append({"prompt": prompt, "logits": logits, "answer": answer, "stopped": stopped})
    return outputs


def compare_outputs(reference: list[dict], candidate: list[dict]) -> dict:
    """Logit and greedy-answer agreement of two models' outputs on the same prompts."""
    import torch.nn.functional as F

    max_abs, kls, agree, total, same, stops, answers = 0.0, [], 0, 0, 0, 0, []
    for ref, got in zip(reference, candidate):
        a, b = ref["logits"], got["logits"]
        max_abs = max(max_abs, (a - b).abs().max().item())
        kls.append(F.kl_div(F.log_softmax(b, -1), F.log_softmax(a, -1), log_target=True,
                            reduction="none").sum(-1).mean().item())
        agree += (a.argmax(-1) == b.argmax(-1)).sum().item()
        total += a.shape[1]
        same += ref["answer"] == got["answer"]
        stops += ref["stopped"] == got["stopped"]
        answers.append({"prompt": ref["prompt"], "reference": ref["answer"], "merged": got["answer"],
                        "reference_stopped": ref["stopped"], "merged_stopped": got["stopped"]})
    return {"max_abs_logit_diff": max_abs, "mean_kl": max(0.0, sum(kls) / len(kls)), "top1_agreement": agree / total,
            "greedy_answers_match": same, "stops_match": stops, "answers": answers}


def save_tokenizer_and_generation_config(model, tokenizer, stop_ids: list[int], directory: Path,
                                         base_path: str) -> None:
    from lora_ft.rundir.artifacts import write_generation_config

    tokenizer.save_pretrained(directory)  # with the chat template used in training
    copy_sentencepiece_model(base_path, directory)
    write_generation_config(directory, tokenizer, stop_ids, model.config)


def copy_sentencepiece_model(base_path: str, directory: Path) -> None:
    """The base's sentencepiece model (tokenizer.model), which transformers does not write back when it saves a
    tokenizer, beside the merged weights: llama.cpp's converter reads it for the families that ship one (Gemma,
    Phi-3, Llama 2, Mistral v0.x), and refuses them without it."""
    if (directory / SENTENCEPIECE_FILE).exists():
        return
    source = Path(base_path) / SENTENCEPIECE_FILE
    if not Path(base_path).is_dir():  # a hub id: the file as the hub cache holds it, if it was downloaded
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(base_path, SENTENCEPIECE_FILE)
        source = Path(cached) if isinstance(cached, str) else source
    if source.is_file():
        shutil.copy(source, directory / SENTENCEPIECE_FILE)


def merge_device(base_path: str) -> str:
    """Where to merge: the GPU when there is one with room for the base in float32 (an 8B model needs about
    32 GB; on a CPU that is as much RAM and many minutes), else the CPU."""
    import torch

    if not torch.cuda.is_available():
        return "cpu"
    folder = Path(base_path)
    stored = sum(f.stat().st_size for f in folder.glob("*.safetensors")) if folder.is_dir() else 0
    if not stored:
        return "cpu"  # size unknown (a hub id): the CPU cannot run out of GPU memory
    config = json.loads((folder / "config.json").read_text()) if (folder / "config.json").is_file() else {}
    stored_dtype = config.get("dtype") or config.get("torch_dtype") or "bfloat16"
    float32_bytes = stored * (1 if stored_dtype == "float32" else 2)
    free, _ = torch.cuda.mem_get_info()
    return "cuda" if float32_bytes * 1.3 < free else "cpu"  # headroom for the adapter and the parity prompts


def merge_run(run: FinishedRun, out_dir: Path, *, dtype: str | None = None, into: str = "original",
              base: str | None = None) -> ParityReport:
    """Merge the run's adapter into a full-precision base, save it to ``out_dir`` and return the parity report.

    Everything is written to a temporary folder beside ``out_dir`` and moved into place only when complete.
    """
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from lora_ft.inference import load_tokenizer, stop_token_ids

    if into not in ("original", "dequantized"):
        raise UserError(f"unknown merge target '{into}'", fix="use --into original or --into dequantized")
    if into == "dequantized" and run.config.model.quantization != "nf4":
        raise UserError("--into dequantized is for QLoRA (nf4) runs; this run trained on full weights",
                        fix="leave out --into")
    out_dir = Path(out_dir)
    check_output_dir_free(out_dir)  # before the slow part
    base_path = locate_base(run, base)
    dtype = dtype or DEFAULT_MERGED_DTYPE
    if dtype not in ("float32", "bfloat16", "float16"):
        raise UserError(f"unknown dtype '{dtype}'", fix="use float32, bfloat16 or float16")
    tokenizer = load_tokenizer(run)
    stop_ids = stop_token_ids(tokenizer, run)
    trust = run.config.model.trust_remote_code

    device = merge_device(base_path)
    console.say(f"loading the base model {run.base_name} in float32 on {device} ...")
    if run.trained_quantized:
        # The reference is the model as trained: NF4 base + adapter.
        from lora_ft.model import nf4_config_for

        nf4 = nf4_config_for(base_path, run.config.model.model_copy(update={"quantization": "nf4", "dtype": "float32"}),
                             device)

        def load_nf4():
            return AutoModelForCausalLM.from_pretrained(base_path, quantization_config=nf4, dtype=torch.float32,
                                                        device_map={"": device}, trust_remote_code=trust)

        trained = PeftModel.from_pretrained(load_nf4(), str(run.adapter_dir)).eval()
        reference = model_outputs(trained, tokenizer, stop_ids)
        reference_name = "the trained model (NF4 base + adapter)"
        del trained
        if into == "dequantized":
            float_base = load_nf4().dequantize()
            merged_into = "dequantized NF4 weights"
        else:
            float_base = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32, device_map={"": device},
                                                              trust_remote_code=trust)
            merged_into = "original 16-bit weights"
        tuned = PeftModel.from_pretrained(float_base, str(run.adapter_dir)).eval()
    else:
        float_base = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32, device_map={"": device},
                                                          trust_remote_code=trust)
        tuned = PeftModel.from_pretrained(float_base, str(run.adapter_dir)).eval()
        reference = model_outputs(tuned, tokenizer, stop_ids)  # before merging rewrites the weights in place
        reference_name = "base + adapter (unmerged, float32)"
        merged_into = "float weights"

    console.say(f"merging the adapter into {merged_into}, saving in {dtype} ...")
    merged = tuned.merge_and_unload().to(getattr(torch, dtype)).eval()
    with staged_directory(out_dir) as staging:
        merged.save_pretrained(staging, safe_serialization=True, max_shard_size="2GB")
        save_tokenizer_and_generation_config(merged, tokenizer, stop_ids, staging, base_path)
        console.say("checking parity (logits and greedy answers) ...")
        # The saved weights (rounded to `dtype`) computed in float32, as the reference is: the check measures the
        # merge and the storage dtype, not the arithmetic precision of this machine.
        merged = merged.to(torch.float32)
        numbers = compare_outputs(reference, model_outputs(merged, tokenizer, stop_ids))
        if run.trained_quantized and into == "original":
            tolerance = ("no fixed bound: the original 16-bit weights differ from the NF4 weights the adapter was "
                         "trained against; --into dequantized reproduces the trained model")
            within = None
        elif run.trained_quantized or dtype != "float32":
            tolerance = f"{dtype} merge: mean KL <= {SIXTEEN_BIT_MAX_MEAN_KL:g}"
            within = numbers["mean_kl"] <= SIXTEEN_BIT_MAX_MEAN_KL
        else:
            tolerance = f"float32 merge: max |logit diff| <= {FLOAT32_MAX_ABS_LOGIT_DIFF:g}"
            within = numbers["max_abs_logit_diff"] <= FLOAT32_MAX_ABS_LOGIT_DIFF
        report = ParityReport(merged_dtype=dtype, merged_into=merged_into, reference=reference_name,
                              prompts=len(PARITY_PROMPTS), tolerance=tolerance, within_tolerance=within, **numbers)
        write_text_atomic(staging / PARITY_FILE, json.dumps(asdict(report), indent=2) + "\n")
    for line in report.lines():
        console.say(line)
    return report
