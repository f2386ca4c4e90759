"""The training loop: TRL's SFTTrainer set up from the resolved config, with progress and tracking."""

from __future__ import annotations

import json
import math
import os
import resource
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from transformers import EarlyStoppingCallback, TrainerCallback
from transformers.trainer_callback import PrinterCallback, ProgressCallback

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


def sft_config(cfg: RunConfig, checkpoint_dir: Path, has_eval: bool, report_to: list[str],
               save_steps: int | None = None):
    """TRL's SFTConfig for the resolved run config; ``save_steps`` from :func:`checkpoint_interval`."""
    from trl import SFTConfig

    train = cfg.train
    periodic_eval = has_eval and train.eval_steps is not None
    keep_best = keeps_best(cfg, has_eval)
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
        save_total_limit=None,  # retention is CheckpointKeeper's: it counts complete checkpoints only
        save_only_model=False,
        load_best_model_at_end=keep_best,
        metric_for_best_model="eval_loss" if keep_best or train.lr_scheduler == "reduce_on_plateau" else None,
        greater_is_better=False if keep_best else None,
        **mixed_precision(cfg),
        use_cpu=cfg.train.device == "cpu",
        # under FSDP its own activation checkpointing does this (distributed.trainer_settings)
        gradient_checkpointing=bool(cfg.model.gradient_checkpointing) and not fsdp_active(cfg),
        use_liger_kernel=cfg.train.fused_kernels is True,
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
        **distributed.trainer_settings(cfg.distributed.strategy, cfg.train.device, distributed.current_world(),
                                       bool(cfg.model.gradient_checkpointing)),
    )


def fsdp_active(cfg: RunConfig) -> bool:
    world = distributed.current_world()
    return cfg.distributed.strategy == "fsdp" and (world.distributed or world.launched)


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
    cannot unscale float16 gradients. float32 compute (a CPU): float32, a CPU has no fast bfloat16 arithmetic."""
    import torch

    return None if cfg.model.dtype == "bfloat16" else torch.float32


class ProgressBar(TrainerCallback):
    """Training progress with the latest loss and non-pad tokens per second.

    On a terminal it is a live progress bar; in a log file (no terminal) it is one line per logging step.
    """

    def __init__(self, live: bool | None = None) -> None:
        self.live = sys.stderr.isatty() if live is None else live
        self.bar = None
        self.started = 0.0
        self.tokens_at_start = 0
        self.step_at_start = 0
        self.last_loss: float | None = None

    def _rate(self, state) -> float:
        return (state.num_input_tokens_seen - self.tokens_at_start) / max(time.perf_counter() - self.started, 1e-9)

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = time.perf_counter()
        self.tokens_at_start = state.num_input_tokens_seen
        self.step_at_start = state.global_step
        if not state.is_world_process_zero:
            self.live = False
            self._write = lambda line: None
        if self.live:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc="training", unit="step",
                            dynamic_ncols=True, file=sys.stderr)

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
            left = elapsed / max(state.global_step - self.step_at_start, 1) * (state.max_steps - state.global_step)
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
        # one host synchronisation for all gradients (not one per tensor: a 1B model's LoRA has about 224)
        if not params or bool(torch.stack([torch.isfinite(p.grad).all() for p in params]).all()):
            return
        step = state.global_step + 1
        if self.mode == "skip" and len(self.skipped) < self.max_skips:
            for p in params:
                p.grad = None
            self.skipped.append(step)
            return
        raise NonFiniteGradients(step, list(self.skipped))


class LogHistory(TrainerCallback):
    """Keeps every logged record, with a timestamp, and appends it to the run's metrics file as it comes, so a run
    that is killed still has its curve up to the kill."""

    def __init__(self, path: Path | None = None, records: list[dict] | None = None) -> None:
        self.path = path
        self.records: list[dict] = list(records or [])

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs:
            return
        record = {"step": state.global_step, "time": time.time(), **logs}
        self.records.append(record)
        if self.path is not None and state.is_world_process_zero:
            with self.path.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(record, default=str) + "\n")


class TrainingAlreadyComplete(Exception):
    """Resumed from the checkpoint of the run's last step: there is nothing left to train."""


class StopAtPlannedEnd(TrainerCallback):
    """Never trains past the planned last step.

    The trainer checks ``max_steps`` only after a step; resumed from a checkpoint of the last step that falls
    partway through an epoch, it would run one more. Raised before that step's first forward pass, so the weights
    stay exactly those of the checkpoint."""

    def on_step_begin(self, args, state, control, **kwargs):
        if state.max_steps > 0 and state.global_step >= state.max_steps:
            raise TrainingAlreadyComplete()


class CheckpointNoSpace(Exception):
    def __init__(self, step: int, needed: int, free: int) -> None:
        super().__init__(f"not enough disk space for the checkpoint at step {step}")
        self.step, self.needed, self.free = step, needed, free


class StopRequest:
    """SIGTERM / SIGINT while training: the first asks for a checkpoint and a clean stop after the current step;
    a second one stops the process at once (a save it cuts short is never resumed from)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict = {}

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.signum = signum
        print(f"\n{signal.Signals(signum).name} received: finishing this step and saving a checkpoint "
              f"(send it again to stop at once)", file=sys.stderr, flush=True)

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()


class CheckpointKeeper(TrainerCallback):
    """Makes the trainer's checkpoints complete-or-absent, keeps the newest ``keep_last``, and saves on demand.

    - after each save it commits the folder with its manifest (:func:`lora_ft.checkpoints.commit`) and prunes;
    - before each save it checks the free space against the last checkpoint's size and stops the run, with the
      previous checkpoint intact, when it would not fit;
    - it asks for a save when ``save_every_minutes`` have passed, and a save and stop when a signal came.
    """

    def __init__(self, checkpoint_dir: Path, fingerprint: dict, keep_last: int, expected_bytes: int,
                 save_every_minutes: float | None = None, stop: StopRequest | None = None,
                 disk_free=lambda path: shutil.disk_usage(path).free) -> None:
        self.checkpoint_dir = Path(checkpoint_dir)
        self.fingerprint = fingerprint
        self.keep_last = keep_last
        self.expected_bytes = expected_bytes
        self.save_every_seconds = save_every_minutes * 60 if save_every_minutes else None
        self.stop = stop
        self.last_save = time.monotonic()
        self.committed: list[Path] = []
        self.disk_free = disk_free
        self.world = distributed.current_world()

    def on_train_begin(self, args, state, control, **kwargs):
        self.last_save = time.monotonic()

    def on_step_end(self, args, state, control, **kwargs):
        # With several processes every decision is agreed on (one tiny all-reduce), or they would part ways.
        time_due = bool(self.save_every_seconds) and time.monotonic() - self.last_save >= self.save_every_seconds
        signalled = self.stop is not None and self.stop.signum is not None
        time_due, signalled = distributed.agree([time_due, signalled], self.world)
        if time_due:
            control.should_save = True
        if signalled:
            control.should_save = True
            control.should_training_stop = True
        if control.should_save:
            needed = int(self.expected_bytes * 1.1) + 16 * 2**20
            free = self.disk_free(self.checkpoint_dir.parent) if state.is_world_process_zero else needed
            (short,) = distributed.agree([free < needed], self.world)
            if short:
                raise CheckpointNoSpace(state.global_step, needed, free)
        return control

    def on_save(self, args, state, control, **kwargs):
        self.last_save = time.monotonic()
        if not state.is_world_process_zero:
            return
        from lora_ft import checkpoints

        folder = self.checkpoint_dir / f"checkpoint-{state.global_step}"
        committed = checkpoints.commit(folder, state.global_step, self.fingerprint)
        self.expected_bytes = max(self.expected_bytes, committed.size)
        self.committed.append(folder)
        checkpoints.prune(self.checkpoint_dir, self.keep_last, state.best_model_checkpoint)


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
    resumed_from_step: int | None = None
    tokens_this_session: int = 0
    interrupted_by: int | None = None  # the signal that stopped training early, if one did
    checkpoint: Path | None = None  # the newest checkpoint this session committed

    @property
    def tokens_per_second(self) -> float:
        return self.tokens_this_session / self.seconds if self.seconds else 0.0


def peak_memory(device: str) -> tuple[int, str]:
    if device == "cuda":
        import torch

        allocated = torch.cuda.max_memory_allocated()
        reserved = torch.cuda.max_memory_reserved()
        return allocated, f"{allocated / 2**30:.2f} GiB allocated, {reserved / 2**30:.2f} GiB reserved (GPU)"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    return rss, f"{rss / 2**30:.2f} GiB RSS (CPU)"


def selective_loss_trainer():
    """SFTTrainer whose training loss projects only the trained positions through the LM head, in one piece.

    For a CPU. TRL's own loss also projects only trained positions, in vocabulary tiles with running
    log-sum-exp, entropy and accuracy, which on a GPU runs as Triton kernels; on a CPU it falls back to several
    float32 passes over every tile, about a third of a small model's step. Here the model's forward is asked
    (``logits_to_keep``) for the logits of the positions whose next token is trained, and PyTorch's fused cross
    entropy takes it from there: the same loss, one pass. It applies to padding-free and packed batches (one row);
    padded batches and evaluation go through TRL's loss unchanged.
    """
    import torch
    from trl import SFTTrainer

    class SelectiveLossTrainer(SFTTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            labels = inputs.get("labels")
            if return_outputs or labels is None or labels.shape[0] != 1 or not model.training:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            targets = inputs.get("shift_labels")
            targets = targets[0] if targets is not None else torch.cat(
                [labels[0, 1:], labels.new_full((1,), -100)])
            keep = (targets != -100).nonzero().squeeze(-1)
            forward = {k: v for k, v in inputs.items() if k not in ("labels", "shift_labels")}
            logits = model(**forward, use_cache=False, logits_to_keep=keep).logits[0]
            loss = torch.nn.functional.cross_entropy(logits.float(), targets[keep], reduction="sum")
            count = num_items_in_batch if num_items_in_batch is not None else keep.numel()
            loss = loss / torch.as_tensor(count, device=loss.device).clamp(min=1)
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                loss = loss * self.accelerator.num_processes
            return loss

    return SelectiveLossTrainer


def build_trainer(model, tokenizer, cfg: RunConfig, train_dataset, eval_dataset, checkpoint_dir: Path,
                  report_to: list[str], extra_callbacks: list):
    import torch
    from trl import SFTTrainer

    has_eval = eval_dataset is not None
    processes = distributed.current_world().size
    save_steps = checkpoint_interval(cfg, optimizer_steps(cfg, len(train_dataset), processes), has_eval)
    args = sft_config(cfg, checkpoint_dir, has_eval, report_to, save_steps)
    callbacks = [StopAtPlannedEnd(), *extra_callbacks]
    if cfg.train.early_stopping_patience is not None and args.load_best_model_at_end:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=cfg.train.early_stopping_patience,
                                               early_stopping_threshold=cfg.train.early_stopping_threshold))
    trainer_class = selective_loss_trainer() if cfg.train.device == "cpu" else SFTTrainer
    trainer = trainer_class(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    keep = trainable_dtype(cfg)
    if keep is not None:
        for param in trainer.model.parameters():
            if param.requires_grad and param.dtype != keep:
                param.data = param.data.to(keep)
    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    return trainer


def finish_complete_run(trainer) -> None:
    """What the trainer does after its last step, for a run resumed at that step: the best adapter when one is
    kept, and the end-of-training callbacks (progress bar, trackers)."""
    if trainer.args.load_best_model_at_end and trainer.state.best_model_checkpoint is not None:
        trainer._load_best_model()
    trainer.control = trainer.callback_handler.on_train_end(trainer.args, trainer.state, trainer.control)


def _callback(trainer, kind):
    return next((cb for cb in trainer.callback_handler.callbacks if isinstance(cb, kind)), None)


def run_training(trainer, device: str, eval_before: bool, has_eval: bool, trained_tokens_per_epoch: int,
                 say=print, resume_from: Path | None = None, stop: StopRequest | None = None) -> TrainOutcome:
    """Evaluate the base, train (from ``resume_from`` when given), evaluate the result; return the numbers.

    When ``stop`` received a signal, training ends after a checkpoint and ``outcome.interrupted_by`` says which;
    the final evaluation is then left out.
    """
    outcome = TrainOutcome(trained_tokens_per_epoch=trained_tokens_per_epoch)
    history = _callback(trainer, LogHistory)
    if device == "cuda":
        import torch

        torch.cuda.reset_peak_memory_stats()
    if resume_from is not None:
        before = [r["eval_loss"] for r in history.records if r.get("step") == 0 and "eval_loss" in r]
        outcome.eval_loss_before = before[0] if before else None
    elif has_eval and eval_before:
        say("evaluating the base model (adapter off) on the eval data ...")
        with trainer.model.disable_adapter():
            outcome.eval_loss_before = trainer.evaluate(metric_key_prefix="eval")["eval_loss"]
        say(f"base model eval loss: {outcome.eval_loss_before:.4f}")
    stop = stop or StopRequest()
    started = time.perf_counter()
    training_loss = float("nan")
    with stop:
        try:
            result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
            training_loss = result.training_loss
        except TrainingAlreadyComplete:
            finish_complete_run(trainer)
    outcome.seconds = time.perf_counter() - started
    outcome.steps = trainer.state.global_step
    outcome.resumed_from_step = _callback(trainer, ProgressBar).step_at_start if resume_from else None
    outcome.train_loss = training_loss if math.isfinite(training_loss) else None
    if resume_from is not None:  # the trainer averages this session's steps only; the run's mean is over all
        losses = [r["loss"] for r in history.records if "loss" in r and math.isfinite(r["loss"])]
        outcome.train_loss = sum(losses) / len(losses) if losses else None
    outcome.tokens_seen = int(trainer.state.num_input_tokens_seen)
    outcome.tokens_this_session = outcome.tokens_seen - _callback(trainer, ProgressBar).tokens_at_start
    outcome.best_checkpoint = trainer.state.best_model_checkpoint
    outcome.stopped_early = trainer.state.global_step < trainer.state.max_steps
    outcome.interrupted_by = stop.signum
    keeper = _callback(trainer, CheckpointKeeper)
    outcome.checkpoint = keeper.committed[-1] if keeper and keeper.committed else None
    if has_eval and outcome.interrupted_by is None:
        outcome.eval_loss_after = trainer.evaluate(metric_key_prefix="eval")["eval_loss"]
    outcome.peak_memory_bytes, outcome.peak_memory = peak_memory(device)
    outcome.log = history.records
    guard = next((cb for cb in trainer.callback_handler.callbacks if isinstance(cb, NonFiniteGuard)), None)
    outcome.skipped_steps = guard.skipped if guard else []
    return outcome
