"""The run directory: what a finished run leaves behind, written for the people and engines that read it.

    <output_dir>/
      adapter/                 the PEFT adapter to serve: adapter_model.safetensors, adapter_config.json,
                               tokenizer files with the chat template used in training, README.md (model card)
      config.yaml              the resolved config (every default filled in)
      manifest.json            versions, git commit, data and tokenizer hashes, seed, hardware, final metrics
      metrics.jsonl            every logged training / eval record
      checkpoints/             resumable checkpoints, each committed with checkpoint.json (files and hashes)
      tensorboard/, wandb/     tracker files, when those trackers are on
      eval/, merged/, export-*/  written later by `lora-ft eval`, `merge` and `export`
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import time
from importlib import metadata
from pathlib import Path

from lora_ft.methods import method_of
from lora_ft.tool_template import serving_note
from lora_ft.rundir.record import FinishedTraining
from lora_ft.errors import UserError
from lora_ft.files import give_umask_permissions, write_text_atomic

ADAPTER_DIR = "adapter"
CHECKPOINT_DIR = "checkpoints"
CONFIG_FILE = "config.yaml"
MANIFEST_FILE = "manifest.json"
METRICS_FILE = "metrics.jsonl"
PACKAGES = ("lora-ft", "torch", "transformers", "peft", "trl", "datasets", "accelerate", "bitsandbytes", "wandb",
            "safetensors", "tokenizers")


def check_run_dir_free(output_dir: str) -> None:
    """Refuse a directory that already holds anything, so nothing finished (or not ours) is ever overwritten."""
    from lora_ft.rundir import lock as run_lock

    run_dir = Path(output_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"output_dir {output_dir} exists and is not a directory",
                        fix=f"choose another output_dir, e.g. --set output_dir={run_lock.suggest_new_dir(run_dir)}")
    if not run_lock.is_fresh(run_dir):
        finished = (run_dir / MANIFEST_FILE).is_file()
        state = ("a finished run" if finished else "files from an earlier run" if run_lock.is_marked(run_dir)
                 else "files lora-ft did not write")
        raise UserError(
            f"output_dir {output_dir} already holds {state}; lora-ft never writes over a run or a user's files",
            fix=f"train into a new directory: --set output_dir={run_lock.suggest_new_dir(run_dir)} (or move the "
            "old one away)",
        )


def package_versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def git_commit(directory: Path) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(directory), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5)
        if out.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(directory), "status", "--porcelain"], capture_output=True,
                               text=True, timeout=5).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.TimeoutExpired):
        return None


def hardware(device: str) -> dict:
    info = {
        "device": device,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
    }
    try:
        info["memory_gib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    if device == "cuda":
        import torch

        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
        info["cuda"] = torch.version.cuda
    return info


DEFAULT_TOKENIZER_BYTES = 20 * 2**20  # when the base's tokenizer files cannot be measured (a hub id)
TOKENIZER_FILES = ("tokenizer*", "vocab*", "merges*", "special_tokens_map*", "added_tokens*", "*.model",
                   "chat_template*")


def tokenizer_bytes(model_dir: str | Path) -> int:
    """The size of the tokenizer files saved with the adapter and with every checkpoint."""
    folder = Path(model_dir)
    if not folder.is_dir():
        return DEFAULT_TOKENIZER_BYTES
    files = {p for pattern in TOKENIZER_FILES for p in folder.glob(pattern) if p.is_file()}
    return sum(p.stat().st_size for p in files) or DEFAULT_TOKENIZER_BYTES


def adapter_bytes(trainable_params: int, tokenizer_size: int = DEFAULT_TOKENIZER_BYTES) -> int:
    """The final adapter folder: float32 LoRA weights, tokenizer files, config and model card."""
    return trainable_params * 4 + tokenizer_size + 256 * 2**10


def checkpoint_bytes(trainable_params: int, tokenizer_size: int = DEFAULT_TOKENIZER_BYTES) -> int:
    """One checkpoint: float32 adapter weights, two AdamW moments, tokenizer files, scheduler/RNG/trainer state."""
    return trainable_params * 12 + tokenizer_size + 2**20


def run_disk_need(trainable_params: int, cfg, tokenizer_size: int = DEFAULT_TOKENIZER_BYTES,
                  saves_left: bool = True, checkpoints_on_disk: int = 0) -> int:
    """Bytes this invocation still has to write: the final adapter, plus the checkpoints that will sit on disk at
    once (the newest ``keep_last``, the best one, and one being written) less those already there. A resume from
    the final step writes only the adapter."""
    need = adapter_bytes(trainable_params, tokenizer_size)
    checkpointing = cfg.train.save_steps is not None or cfg.train.early_stopping_patience is not None
    if checkpointing and saves_left:
        at_once = cfg.train.keep_last + 1 + (cfg.train.early_stopping_patience is not None)
        need += max(1, at_once - checkpoints_on_disk) * checkpoint_bytes(trainable_params, tokenizer_size)
    return int(need * 1.1) + 8 * 2**20


def check_free_space(directory: Path, needed: int, free: int | None = None) -> None:
    """Refuse to start a run that would fill the disk: better now than mid-save."""
    probe = Path(directory).resolve()
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free if free is None else free
    if free < needed:
        raise UserError(
            f"not enough free disk space for the run in {directory}: about {needed / 2**20:,.0f} MiB needed "
            f"(adapter and checkpoints), {free / 2**20:,.0f} MiB free",
            fix="free some space, choose another output_dir, or lower train.keep_last",
        )


def write_metrics(run_dir: Path, records: list[dict]) -> None:
    lines = "".join(json.dumps(r, default=str) + "\n" for r in records)
    write_text_atomic(run_dir / METRICS_FILE, lines)


STAGED_ADAPTER = ".adapter.partial"


def save_adapter(trainer, tokenizer, chat_template: str, run_dir: Path, is_main: bool = True,
                 stop_ids: list[int] | None = None) -> Path:
    """Save the adapter weights (safetensors) and the tokenizer with the chat template used in training into a
    staging folder of the run directory (``publish_adapter`` moves it into place once complete); return it.

    Under FSDP every process takes part (the adapter's shards are gathered into one file); otherwise only the main
    process writes.
    """
    staging = run_dir / STAGED_ADAPTER
    if is_main and staging.exists():
        shutil.rmtree(staging)  # left by an attempt that was cut short
    if getattr(trainer, "is_fsdp_enabled", False):
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
        trainer.save_model(str(staging))
        if is_main:  # the trainer's pickled arguments are a checkpoint's, not part of an adapter to serve
            (staging / "training_args.bin").unlink(missing_ok=True)
    elif is_main:
        trainer.model.save_pretrained(str(staging), safe_serialization=True)
    if is_main:
        tokenizer.chat_template = chat_template
        tokenizer.save_pretrained(str(staging))
        if stop_ids:
            write_generation_config(staging, tokenizer, stop_ids)
    return staging


def write_generation_config(directory: Path, tokenizer, stop_ids: list[int], model_config=None) -> None:
    """generation_config.json whose EOS is the end-of-turn token (then the tokenizer's EOS), so that transformers,
    vLLM and TGI stop where the tuned model was trained to stop."""
    from transformers import GenerationConfig

    generation = GenerationConfig.from_model_config(model_config) if model_config is not None else GenerationConfig()
    generation.eos_token_id = stop_ids if len(stop_ids) > 1 else stop_ids[0]
    generation.pad_token_id = tokenizer.pad_token_id
    generation.bos_token_id = tokenizer.bos_token_id
    generation.save_pretrained(directory)


def publish_adapter(staging: Path, run_dir: Path) -> Path:
    """Move a completely written adapter into ``run_dir/adapter``: a reader sees the whole adapter or none.

    An ``adapter/`` already there is from an attempt of this run that stopped before its manifest was written
    (only a run directory lora-ft made is touched)."""
    from lora_ft.rundir import lock as run_lock

    adapter_dir = run_dir / ADAPTER_DIR
    for item in staging.iterdir():
        if item.is_file():
            fd = os.open(item, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    give_umask_permissions(staging)  # safetensors writes its files private
    if adapter_dir.exists():
        run_lock.require_mark(run_dir, f"replace {adapter_dir}")
        shutil.rmtree(adapter_dir)
    os.replace(staging, adapter_dir)
    return adapter_dir


def run_manifest(record: FinishedTraining, adapter_dir: Path) -> dict:
    """What ran, on what, with what result: the record that also marks the run as finished."""
    from lora_ft import model as model_lib

    packages = package_versions()
    outcome = record.outcome
    return {
        "lora_ft_version": packages.get("lora-ft"),
        "base_model": {"name": record.base_name, "path": record.base_path, "upstream": record.upstream,
                       "tokenizer_sha256": model_lib.model_files_digest(record.base_path)},
        "config_file": str(record.config_file) if record.config_file else None,
        "overrides": record.overrides,
        "git_commit": git_commit(record.config_dir),
        "seed": record.config.train.seed,
        "packages": packages,
        "hardware": hardware(record.device),
        "data": record.data,
        "chat_template": {"origin": record.template_origin, "end_of_turn": record.end_of_turn,
                          "end_of_turn_id": record.end_of_turn_id, "pad_token": record.pad_token},
        "parameters": {"trainable": record.trainable, "total": record.total},
        "metrics": {
            "steps": outcome.steps,
            "resumed_from_step": outcome.resumed_from_step,
            "forced_resume_changes": record.forced_changes,
            "train_seconds": round(outcome.seconds, 2),
            "train_loss": outcome.train_loss,
            "eval_loss_before": outcome.eval_loss_before,
            "eval_loss_after": outcome.eval_loss_after,
            "method": outcome.method,
            "reward_accuracy_before": outcome.rewards_before.get("accuracy"),
            "reward_accuracy_after": outcome.rewards_after.get("accuracy"),
            "reward_margin_before": outcome.rewards_before.get("margin"),
            "reward_margin_after": outcome.rewards_after.get("margin"),
            **({"held_out_reward_before": outcome.rewards_before.get("reward"),  # RL: greedy held-out answers
                "held_out_reward_after": outcome.rewards_after.get("reward"),
                "held_out_stopped_before": outcome.rewards_before.get("stopped"),
                "held_out_stopped_after": outcome.rewards_after.get("stopped")}
               if "reward" in outcome.rewards_before or "reward" in outcome.rewards_after else {}),
            "tokens_seen": outcome.tokens_seen,
            "tokens_per_second": round(outcome.tokens_per_second, 2),
            "trained_tokens_per_epoch": outcome.trained_tokens_per_epoch,
            "peak_memory_bytes": outcome.peak_memory_bytes,
            "peak_memory": outcome.peak_memory,
            "best_checkpoint": outcome.best_checkpoint,
            "skipped_nonfinite_steps": outcome.skipped_steps,
        },
        "trackers": record.tracker_notes,
        "total_seconds": round(time.time() - record.started, 2),
        "outputs": {"adapter": str(adapter_dir), "config": str(record.run_dir / CONFIG_FILE),
                    "metrics": str(record.run_dir / METRICS_FILE)},
        "tokenized_data": record.tokenized_data,
    }


def write_manifest(run_dir: Path, manifest: dict) -> None:
    manifest = {"format": 1, "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **manifest}
    write_text_atomic(run_dir / MANIFEST_FILE, json.dumps(manifest, indent=2, default=str) + "\n")


def _fmt(value, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def model_card(record: FinishedTraining) -> str:
    """The adapter's README.md: what it is, how it was trained, how well, and how to use it."""
    cfg, outcome, run_dir, upstream = record.config, record.outcome, record.run_dir, record.upstream
    base_name, base_path, data_rows = record.base_name, record.base_path, record.data
    trainable, total, end_of_turn = record.trainable, record.total, record.end_of_turn
    lora = cfg.lora
    targets = lora.target_modules if isinstance(lora.target_modules, str) else ", ".join(lora.target_modules)
    data_lines = "\n".join(
        f"| `{d['path']}` | {d['format']} | {d['kept']} | {d['dropped']} | `{(d['sha256'] or '')[:12]}` |"
        for d in data_rows
    )
    improvement = ""
    if outcome.eval_loss_before is not None and outcome.eval_loss_after is not None:
        improvement = f" ({outcome.eval_loss_after - outcome.eval_loss_before:+.4f})"
    hub_line = (f"\nUpstream model: `{upstream}`. This copy was dequantized from a Q4_1 GGUF, so its weights differ "
                f"slightly from the upstream release: serve the adapter on the same copy." if upstream else "")
    extras = [f"top {lora.top_n_layers} layers" if lora.top_n_layers else "", "DoRA" if lora.use_dora else "",
              "rsLoRA" if lora.use_rslora else ""]
    lora_line = (f"r={lora.r}, alpha={lora.alpha:g}, dropout={lora.dropout:g}, targets: {targets}"
                 + "".join(f", {e}" for e in extras if e))
    start_line = (f"\nStarted from the adapter of the finished run `{cfg.model.adapter}` and trained it further."
                  if cfg.model.adapter else "")
    before = "the adapter it started from" if cfg.model.adapter else "base model"
    method = method_of(cfg.method)
    loss = f"eval {method.loss_name}"
    method_line = method.description
    settings = cfg.method_settings
    if settings is not None:
        method_line += " (" + ", ".join(f"{k} {v}" for k, v in settings.model_dump().items()
                                        if v is not None and k != "rewards") + ")"
    if getattr(settings, "rewards", None):
        method_line += ".\n- Rewards, summed with their weights:\n" + "\n".join(
            f"  - {spec.describe()}" for spec in settings.rewards)
    reward_rows = "".join(
        f"| {name}, {before} / with this adapter | {_fmt(outcome.rewards_before.get(key))} / "
        f"{_fmt(outcome.rewards_after.get(key))} |\n"
        for key, name in (("accuracy", "eval reward accuracy"), ("margin", "eval reward margin"),
                          ("reward", "held-out mean reward (greedy answers)"),
                          ("stopped", "held-out answers ending at the end-of-turn token"))
        if key in outcome.rewards_after)
    loss_rows = "" if method.evaluates_rewards else (
        f"| {loss}, {before} | {_fmt(outcome.eval_loss_before)} |\n"
        f"| {loss}, with this adapter | {_fmt(outcome.eval_loss_after)}{improvement} |\n")
    return f"""---
library_name: peft
base_model: {upstream or base_name}
tags: [lora, lora-ft, {'qlora, ' if cfg.model.quantization == 'nf4' else ''}{cfg.method}]
---

# LoRA adapter for {base_name}

Trained with lora-ft from `{run_dir / CONFIG_FILE}` (the resolved config; `manifest.json` beside it records
versions, data hashes and hardware).
Base model: {base_name}, loaded from `{base_path}`.{hub_line}{start_line}

## Results

| | value |
| --- | --- |
{loss_rows}{reward_rows}| final train loss | {_fmt(outcome.train_loss)} |
| optimizer steps | {outcome.steps} |
| tokens seen | {outcome.tokens_seen:,} |
| training time | {outcome.seconds / 60:.1f} min on {cfg.train.device} |

## Training

- Method: {method_line}.
- LoRA: {lora_line}; {trainable:,} trainable of {total:,} parameters
  ({100 * trainable / max(total, 1):.2f}%).
- Quantization during training: {cfg.model.quantization}; compute dtype {cfg.model.dtype}.
- Learning rate {cfg.train.learning_rate:g} ({cfg.train.lr_scheduler}, warmup {cfg.train.warmup_ratio:g}), batch
  {cfg.train.batch_size} x {cfg.train.gradient_accumulation_steps} accumulation, max length {cfg.data.max_seq_length},
  seed {cfg.train.seed}.
- Loss on: {'assistant answers and their end-of-turn token' if cfg.data.train_on == 'answers' or
              method.pairs else 'all tokens'}.

| dataset | format | rows used | rows dropped | sha256 |
| --- | --- | --- | --- | --- |
{data_lines}

## Use

The tokenizer files here carry the chat template used in training; answers end with `{end_of_turn}`, and
`generation_config.json` lists it as the end-of-sequence token: stop generation there (transformers, vLLM and TGI
read it; llama.cpp and Ollama get it in the GGUF metadata and the Modelfile's `stop` lines).

```python
from peft import AutoPeftModelForCausalLM
from transformers import AutoTokenizer

model = AutoPeftModelForCausalLM.from_pretrained("{run_dir / ADAPTER_DIR}")
tokenizer = AutoTokenizer.from_pretrained("{run_dir / ADAPTER_DIR}")
messages = [{{"role": "user", "content": "What is consideration in contract law?"}}]
inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
output = model.generate(**inputs, max_new_tokens=200)
print(tokenizer.decode(output[0][inputs["input_ids"].shape[1]:], skip_special_tokens=True))
```

{serving_note(record.tool_format == "hermes")}
## Limitations

This adapter learned from the datasets above only. It inherits the base model's limits and can state wrong
facts with confidence; check its answers before relying on them, and do not use it as legal, medical or
financial advice without review by a professional.
"""
