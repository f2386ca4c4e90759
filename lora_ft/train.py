"""The training loop: TRL's SFTTrainer set up from the resolved config, with progress and tracking."""

from __future__ import annotations

import math
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from transformers import EarlyStoppingCallback, TrainerCallback
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from lora_ft.config import RunConfig

SCHEDULERS = {
    "cosine": "cosine",
    "linear": "linear",
    "constant": "constant_with_warmup",
    "reduce_on_plateau": "reduce_lr_on_plateau",
}


def sft_config(cfg: RunConfig, checkpoint_dir: Path, has_eval: bool, report_to: list[str]):
    """TRL's SFTConfig for the resolved run config."""
    from trl import SFTConfig

    train = cfg.train
    periodic_eval = has_eval and train.eval_steps is not None
    keep_best = train.early_stopping_patience is not None and periodic_eval
    save_steps = train.save_steps or (train.eval_steps if keep_best else None)
    return SFTConfig(
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
        save_total_limit=train.save_total_limit,
        save_only_model=False,
        load_best_model_at_end=keep_best,
        metric_for_best_model="eval_loss" if keep_best or train.lr_scheduler == "reduce_on_plateau" else None,
        greater_is_better=False if keep_best else None,
        bf16=cfg.model.dtype == "bfloat16" and cfg.model.quantization == "none" and cfg.train.device == "cuda",
        fp16=cfg.model.dtype == "float16" and cfg.model.quantization == "none",
        use_cpu=cfg.train.device == "cpu",
        gradient_checkpointing=bool(cfg.model.gradient_checkpointing),
        gradient_checkpointing_kwargs={"use_reentrant": False},
        report_to=report_to,
        run_name=cfg.tracking.run_name,
        # Samples arrive tokenized and truncated to data.max_seq_length; TRL needs max_length only to pack.
        max_length=cfg.data.max_seq_length if train.packing or not train.padding_free else None,
        packing=train.packing,
        padding_free=train.padding_free,
        dataloader_num_workers=0,
        disable_tqdm=True,
        include_num_input_tokens_seen="non_padding",
        dataset_num_proc=None,
        push_to_hub=False,
        hub_token=None,
    )


class ProgressBar(TrainerCallback):
    """Training progress with the latest loss and non-pad tokens per second.

    On a terminal it is a live progress bar; in a log file (no terminal) it is one line per logging step.
    """

    def __init__(self, live: bool | None = None) -> None:
        self.live = sys.stderr.isatty() if live is None else live
        self.bar = None
        self.started = 0.0
        self.last_loss: float | None = None

    def _rate(self, state) -> float:
        return state.num_input_tokens_seen / max(time.perf_counter() - self.started, 1e-9)

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = time.perf_counter()
        if self.live:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=state.max_steps, desc="training", unit="step", dynamic_ncols=True,
                            file=sys.stderr)

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is None:
            return
        postfix = {"tok/s": f"{self._rate(state):.0f}"}
        if self.last_loss is not None:
            postfix["loss"] = f"{self.last_loss:.3f}"
        self.bar.set_postfix(postfix, refresh=False)
        self.bar.update(state.global_step - self.bar.n)

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        if "loss" in logs:
            self.last_loss = float(logs["loss"])
        if "eval_loss" in logs and self.started:  # evaluations before training are reported by the caller
            self._write(f"step {state.global_step}: eval loss {logs['eval_loss']:.4f}")
        elif "loss" in logs and not self.live:
            elapsed = time.perf_counter() - self.started
            left = elapsed / max(state.global_step, 1) * (state.max_steps - state.global_step)
            self._write(f"step {state.global_step}/{state.max_steps}  loss {self.last_loss:.4f}  "
                        f"lr {logs.get('learning_rate', 0):.2e}  {self._rate(state):.0f} tok/s  "
                        f"elapsed {elapsed / 60:.1f} min, about {left / 60:.1f} min left")

    def _write(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line, file=sys.stderr)
        else:
            print(line, file=sys.stderr, flush=True)

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class NonFiniteGradients(Exception):
    def __init__(self, step: int, skipped: list[int]) -> None:
        super().__init__(f"non-finite gradients at step {step}")
        self.step = step
        self.skipped = skipped


class NonFiniteGuard(TrainerCallback):
    """Checks the trainable gradients before every optimizer step; NaN or Inf never reaches the weights.

    ``stop`` raises :class:`NonFiniteGradients` (the optimizer step does not happen); ``skip`` drops the step's
    gradients, so the optimizer leaves the weights alone, up to ``max_skips`` times.
    """

    def __init__(self, mode: str = "stop", max_skips: int = 10) -> None:
        self.mode = mode
        self.max_skips = max_skips
        self.skipped: list[int] = []

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        import torch

        params = [p for p in model.parameters() if p.requires_grad and p.grad is not None]
        if all(bool(torch.isfinite(p.grad).all()) for p in params):
            return
        step = state.global_step + 1
        if self.mode == "skip" and len(self.skipped) < self.max_skips:
            for p in params:
                p.grad = None
            self.skipped.append(step)
            return
        raise NonFiniteGradients(step, list(self.skipped))


class LogHistory(TrainerCallback):
    """Keeps every logged record, with a timestamp, for the run's metrics file."""

    def __init__(self) -> None:
        self.records: list[dict] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs:
            self.records.append({"step": state.global_step, "time": time.time(), **logs})


@dataclass
class TrainOutcome:
    steps: int = 0
    seconds: float = 0.0
    train_loss: float | None = None
    eval_loss_before: float | None = None
    eval_loss_after: float | None = None
    best_checkpoint: str | None = None
    skipped_steps: list[int] = field(default_factory=list)
    tokens_seen: int = 0
    trained_tokens_per_epoch: int = 0
    peak_memory: str = ""
    peak_memory_bytes: int = 0
    stopped_early: bool = False
    log: list[dict] = field(default_factory=list)

    @property
    def tokens_per_second(self) -> float:
        return self.tokens_seen / self.seconds if self.seconds else 0.0


def peak_memory(device: str) -> tuple[int, str]:
    if device == "cuda":
        import torch

        allocated = torch.cuda.max_memory_allocated()
        reserved = torch.cuda.max_memory_reserved()
        return allocated, f"{allocated / 2**30:.2f} GiB allocated, {reserved / 2**30:.2f} GiB reserved (GPU)"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    return rss, f"{rss / 2**30:.2f} GiB RSS (CPU)"


def build_trainer(model, tokenizer, cfg: RunConfig, train_dataset, eval_dataset, checkpoint_dir: Path,
                  report_to: list[str], extra_callbacks: list):
    import torch
    from trl import SFTTrainer

    args = sft_config(cfg, checkpoint_dir, eval_dataset is not None, report_to)
    callbacks = list(extra_callbacks)
    if cfg.train.early_stopping_patience is not None and args.load_best_model_at_end:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=cfg.train.early_stopping_patience,
                                               early_stopping_threshold=cfg.train.early_stopping_threshold))
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    if cfg.model.quantization != "none":
        # TRL stores a quantized model's LoRA weights in bfloat16; keep them in the compute dtype instead, which is
        # the same on a GPU and avoids bfloat16 arithmetic a CPU has no fast path for.
        compute = getattr(torch, cfg.model.dtype)
        for param in trainer.model.parameters():
            if param.requires_grad and param.dtype != compute:
                param.data = param.data.to(compute)
    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    return trainer


def run_training(trainer, device: str, eval_before: bool, has_eval: bool, trained_tokens_per_epoch: int,
                 say=print) -> TrainOutcome:
    """Evaluate the base, train, evaluate the result; return the numbers for the summary."""
    outcome = TrainOutcome(trained_tokens_per_epoch=trained_tokens_per_epoch)
    history = next(cb for cb in trainer.callback_handler.callbacks if isinstance(cb, LogHistory))
    if device == "cuda":
        import torch

        torch.cuda.reset_peak_memory_stats()
    if has_eval and eval_before:
        say("evaluating the base model (adapter off) on the eval data ...")
        with trainer.model.disable_adapter():
            outcome.eval_loss_before = trainer.evaluate(metric_key_prefix="eval")["eval_loss"]
        say(f"base model eval loss: {outcome.eval_loss_before:.4f}")
    started = time.perf_counter()
    result = trainer.train()
    outcome.seconds = time.perf_counter() - started
    outcome.steps = trainer.state.global_step
    outcome.train_loss = result.training_loss if math.isfinite(result.training_loss) else None
    outcome.tokens_seen = int(trainer.state.num_input_tokens_seen)
    outcome.best_checkpoint = trainer.state.best_model_checkpoint
    outcome.stopped_early = trainer.state.global_step < trainer.state.max_steps
    if has_eval:
        outcome.eval_loss_after = trainer.evaluate(metric_key_prefix="eval")["eval_loss"]
    outcome.peak_memory_bytes, outcome.peak_memory = peak_memory(device)
    outcome.log = history.records
    guard = next((cb for cb in trainer.callback_handler.callbacks if isinstance(cb, NonFiniteGuard)), None)
    outcome.skipped_steps = guard.skipped if guard else []
    return outcome
