"""The DPO arms of `scripts/bench.py --method dpo` (imported by it; each arm runs in its own process).

- trl-dpo (the baseline): the DPO script a careful user writes from the TRL and PEFT docs: DPOTrainer with a
  LoraConfig (so the reference is the base with the adapter off, no second model), conversational
  prompt/chosen/rejected data with the system prompt, padded batches (TRL's default), precision and gradient
  checkpointing set for the device by hand (CPU: float32, none; GPU: NF4 base, bfloat16, checkpointing).
- ours: `lora-ft train configs/legal_dpo.yaml` from the base model (``model.adapter=null``, as the baseline
  starts), with its defaults: packed pairs, log-probabilities at answer positions only, the reference pass
  without gradient.
- ours-sft: `lora-ft train configs/legal_domain.yaml` on the legal SFT data, the same steps: the SFT speed and
  memory the DPO targets are stated against.

Both DPO arms: same model, pairs (examples/legal/preferences.jsonl), maximum length 512, effective batch 4 x 2,
learning rate 5e-5, beta 0.1, seed and steps. Tokens are the non-pad tokens of both answers with their prompt
(the trainer's count: the attention mask's sum for padded batches, the row's tokens for packed ones).
"""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DPO_CONFIG = REPO / "configs" / "legal_dpo.yaml"
PAIRS = REPO / "examples" / "legal" / "preferences.jsonl"
SYSTEM = "You are a careful legal assistant. Answer clearly and concisely, in plain English."


def baseline_model(model_dir: Path):
    """The baselines' model and LoRA settings, as the TRL and PEFT docs show them: NF4 with bfloat16 compute on a
    CUDA GPU, float32 on a CPU; rank 16 on every linear layer."""
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    if torch.cuda.is_available():
        quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                   bnb_4bit_compute_dtype=torch.bfloat16)
        model = AutoModelForCausalLM.from_pretrained(model_dir, quantization_config=quant, dtype=torch.bfloat16,
                                                     device_map={"": 0})
    else:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    return model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear",
                             task_type="CAUSAL_LM")


def run_trl_dpo(model_dir: Path, data: Path, max_len: int, steps: int, work: Path, clock) -> dict:
    """TRL's DPOTrainer + PEFT as their docs show it."""
    import torch
    from datasets import load_dataset
    from transformers import AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    cuda = torch.cuda.is_available()

    def conversational(row):
        return {"prompt": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": row["prompt"]}],
                "chosen": [{"role": "assistant", "content": row["chosen"]}],
                "rejected": [{"role": "assistant", "content": row["rejected"]}]}

    dataset = load_dataset("json", data_files=str(data), split="train")
    dataset = dataset.map(conversational, remove_columns=dataset.column_names)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model, peft_config = baseline_model(model_dir)
    args = DPOConfig(**baseline_arguments(work, steps, max_len, 5e-5), beta=0.1, bf16=cuda,
                     gradient_checkpointing=cuda)
    return trained(DPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                              peft_config=peft_config, callbacks=[clock.callback()]), clock)


def baseline_arguments(work: Path, steps: int, max_len: int, learning_rate: float) -> dict:
    """The work settings the baselines share with each other and with ours: batch 4 x 2, a cosine schedule with
    10% warm-up, the steps, the maximum length, seed 42, a log every step, no saving, non-pad tokens counted."""
    import torch

    return dict(output_dir=str(work / "baseline-out"), per_device_train_batch_size=4, gradient_accumulation_steps=2,
                learning_rate=learning_rate, lr_scheduler_type="cosine", warmup_steps=0.1, max_steps=steps,
                max_length=max_len, logging_steps=1, save_strategy="no", report_to="none", seed=42,
                use_cpu=not torch.cuda.is_available(), include_num_input_tokens_seen="non_padding", disable_tqdm=True)


def trained(trainer, clock) -> dict:
    """Train (the GPU's peak memory counted from here) and return the step clock's records."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    return {"steps": clock.steps, "checkpointing": bool(trainer.args.gradient_checkpointing)}


def preference_workload(data: Path, work: Path) -> Path:
    """Pairs for a synthetic workload, from its alpaca-like rows: each answer chosen, the next row's rejected."""
    import json

    pairs = work / "pairs.jsonl"
    if not pairs.is_file():
        rows = [json.loads(line) for line in data.read_text().splitlines() if line.strip()]
        with pairs.open("w") as fh:
            for number, row in enumerate(rows):
                other = rows[(number + 1) % len(rows)]
                fh.write(json.dumps({"prompt": row["instruction"], "chosen": row["output"],
                                     "rejected": other["output"]}) + "\n")
    return pairs
