"""The trainer's arguments from the resolved config: steps, checkpoint interval, precision, and the arguments every
method shares (each method's TRL config is built from them by its module in :mod:`lora_ft.methods`)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

from lora_ft import distributed
from lora_ft.config import RunConfig

SCHEDULERS = {
    "cosine": "cosine",
    "linear": "linear",
    "constant": "constant_with_warmup",
    "reduce_on_plateau": "reduce_lr_on_plateau",
}


def reuse_freed_memory() -> bool:
    """Ask glibc's allocator to keep freed memory for reuse instead of returning it to the system at once.

    A training step allocates and frees the same large activation buffers every micro-step. By default glibc
    serves each one with a fresh mmap and unmaps it when freed, so every step page-faults its activations in
    again; on a CPU that is several percent of the step. Raising the mmap and trim thresholds (what the
    MALLOC_MMAP_THRESHOLD_ and MALLOC_TRIM_THRESHOLD_ environment variables do at start-up) keeps them in the heap.
    Peak memory is unchanged; memory freed late in the run is returned when the process ends. Returns whether it
    applied (glibc only).
    """
    import ctypes
    import ctypes.util

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
    return all((
        mallopt(m_mmap_threshold, 32 * 2**20) == 1,  # glibc's maximum on 64-bit systems
        mallopt(m_trim_threshold, 2**31 - 1) == 1,
        mallopt(m_top_pad, 64 * 2**20) == 1,
    ))


def keeps_best(cfg: RunConfig, has_eval: bool) -> bool:
    return cfg.train.early_stopping_patience is not None and has_eval and cfg.train.eval_steps is not None


def checkpoint_interval(cfg: RunConfig, total_steps: int, has_eval: bool) -> int | None:
    """Optimizer steps between checkpoints: the configured number, or for ``auto`` about ten saves per run on a
    multiple of the logging interval (so logged losses of a resumed run match), or of ``eval_steps`` when the best
    adapter is kept (the trainer can only keep a best checkpoint it saved)."""
    train = cfg.train
    unit = train.eval_steps if keeps_best(cfg, has_eval) else train.logging_steps
    if train.save_steps is None:
        return unit if keeps_best(cfg, has_eval) else None
    if train.save_steps != "auto":
        return train.save_steps
    wanted = max(1, math.ceil(total_steps / 10))
    return max(unit, math.ceil(wanted / unit) * unit)


def optimizer_steps(cfg: RunConfig, train_samples: int, processes: int = 1) -> int:
    """How many optimizer steps the run takes (before packing, which only lowers it)."""
    if cfg.train.max_steps:
        return cfg.train.max_steps
    batches = math.ceil(train_samples / (cfg.train.batch_size * processes))
    return max(1, math.ceil(cfg.train.epochs * math.ceil(batches / cfg.train.gradient_accumulation_steps)))


def common_arguments(cfg: RunConfig, checkpoint_dir: Path, has_eval: bool, report_to: list[str],
                     save_steps: int | None = None) -> dict:
    """The trainer arguments every method shares (TRL's configs are all TrainingArguments)."""
    train = cfg.train
    periodic_eval = has_eval and train.eval_steps is not None
    keep_best = keeps_best(cfg, has_eval)
    return dict(
        output_dir=str(checkpoint_dir),
        per_device_train_batch_size=train.batch_size,
        per_device_eval_batch_size=train.batch_size,
        gradient_accumulation_steps=train.gradient_accumulation_steps,
        learning_rate=train.learning_rate,
        lr_scheduler_type=SCHEDULERS[train.lr_scheduler],
        warmup_steps=train.warmup_ratio,
        num_train_epochs=train.epochs,
        max_steps=train.max_steps or -1,
        weight_decay=train.weight_decay,
        max_grad_norm=train.max_grad_norm,
        optim=train.optimizer,
        seed=train.seed,
        data_seed=train.seed,
        logging_steps=train.logging_steps,
        logging_first_step=True,
        eval_strategy="steps" if periodic_eval else "no",
        eval_steps=train.eval_steps if periodic_eval else None,
        save_strategy="steps" if save_steps else "no",
        save_steps=save_steps or 500,
        save_total_limit=None,  # retention is CheckpointKeeper's: it counts complete checkpoints only
        save_only_model=False,
        load_best_model_at_end=keep_best,
        metric_for_best_model="eval_loss" if keep_best or train.lr_scheduler == "reduce_on_plateau" else None,
        greater_is_better=False if keep_best else None,
        **mixed_precision(cfg),
        use_cpu=cfg.train.device == "cpu",
        # also under FSDP, in place of FSDP's own activation checkpointing (distributed.trainer_settings says why)
        gradient_checkpointing=bool(cfg.model.gradient_checkpointing),
        gradient_checkpointing_kwargs={"use_reentrant": False},
        report_to=report_to,
        run_name=cfg.tracking.run_name,
        dataloader_num_workers=0,
        disable_tqdm=True,
        include_num_input_tokens_seen="non_padding",
        push_to_hub=False,
        hub_token=None,
        # how long a collective waits for the other processes (accelerate's init_process_group timeout)
        ddp_timeout=max(1, round(cfg.distributed.timeout_minutes * 60)),
        **distributed.trainer_settings(cfg.distributed.strategy, cfg.train.device, distributed.current_world(),
                                       bool(cfg.model.gradient_checkpointing)),
    )


def mixed_precision(cfg: RunConfig) -> dict:
    """Autocast on a GPU for every run, quantized or not (the 4-bit layers, norms, attention and LM head then run
    in 16 bits, as TRL's own QLoRA does): bf16 where the GPU has it; fp16 with a gradient scaler where it has not
    (T4, V100), the trainable weights kept in float32 for the scaler. None on a CPU."""
    on_gpu = cfg.train.device == "cuda"
    return {"bf16": on_gpu and cfg.model.dtype == "bfloat16", "fp16": on_gpu and cfg.model.dtype == "float16"}


def trainable_dtype(cfg: RunConfig):
    """The dtype the trainable (LoRA) weights are kept in, or None to keep what PEFT and TRL chose.

    bfloat16 compute: TRL stores a quantized model's LoRA A/B in bfloat16 and leaves DoRA's magnitude vector in
    float32 (its updates are below bfloat16's resolution): kept. float16 compute: float32, the gradient scaler
    cannot unscale float16 gradients. A CPU: float32, with float32 or bfloat16 base weights (bfloat16 speeds up
    the frozen matrix products on a CPU that has it; the adapter and its optimizer keep float32's precision)."""
    import torch

    return None if cfg.model.dtype == "bfloat16" and cfg.train.device == "cuda" else torch.float32
