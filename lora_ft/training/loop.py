"""One training session: TRL's trainer built from the resolved config, run from the start or a checkpoint, and the
numbers it returns (:class:`TrainOutcome`)."""

from __future__ import annotations

import math
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path

from transformers import EarlyStoppingCallback
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from lora_ft import console, distributed
from lora_ft.config import RunConfig
from lora_ft.methods import method_of
from lora_ft.training.arguments import checkpoint_interval, common_arguments, optimizer_steps, trainable_dtype
from lora_ft.training.callbacks import LoopCallbacks, StopAtPlannedEnd, TrainingAlreadyComplete

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
    method: str = "sft"
    rewards_before: dict = field(default_factory=dict)  # preference methods: reward accuracy and margin on eval
    rewards_after: dict = field(default_factory=dict)

    @property
    def tokens_per_second(self) -> float:
        return self.tokens_this_session / self.seconds if self.seconds else 0.0

    def summary_table(self, run_dir: Path, adapter_dir: Path) -> str:
        """The results as the run's last lines say them."""
        def fmt(v):
            return "n/a" if v is None else f"{v:.4f}"

        change = ""
        if self.eval_loss_before is not None and self.eval_loss_after is not None:
            change = f"  ({self.eval_loss_after - self.eval_loss_before:+.4f})"
        loss = method_of(self.method).loss_name
        rewards = []
        for key, name in (("accuracy", "reward accuracy"), ("margin", "reward margin"),
                          ("reward", "held-out reward"), ("stopped", "answers stopped")):
            if key in self.rewards_before or key in self.rewards_after:
                rewards.append((f"{name} before / after", f"{fmt(self.rewards_before.get(key))} / "
                                                           f"{fmt(self.rewards_after.get(key))}"))
        return console.table([
            ("steps", f"{self.steps}" + ("  (stopped early)" if self.stopped_early else "")),
            ("time", f"{self.seconds:.0f} s  ({self.tokens_per_second:.0f} non-pad tokens/s)"),
            (f"train {loss}", fmt(self.train_loss)),
            *([] if method_of(self.method).evaluates_rewards else [
                (f"eval {loss} before", fmt(self.eval_loss_before)),
                (f"eval {loss} after", fmt(self.eval_loss_after) + change)]),
            *rewards,
            ("tokens seen", f"{self.tokens_seen:,}"),
            ("peak memory", self.peak_memory),
            ("adapter", str(adapter_dir)),
            ("run directory", str(run_dir)),
        ])


def peak_memory(device: str) -> tuple[int, str]:
    if device == "cuda":
        import torch

        allocated = torch.cuda.max_memory_allocated()
        reserved = torch.cuda.max_memory_reserved()
        return allocated, f"{allocated / 2**30:.2f} GiB allocated, {reserved / 2**30:.2f} GiB reserved (GPU)"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    return rss, f"{rss / 2**30:.2f} GiB RSS (CPU)"


def prepare_process(cfg: RunConfig) -> None:
    """This process, ready to train: the CPU allocator keeps freed memory, the libraries keep quiet, the seed set."""
    import torch

    from lora_ft.training.arguments import reuse_freed_memory

    if cfg.train.device == "cpu":
        reuse_freed_memory()
    console.quiet_libraries()
    torch.manual_seed(cfg.train.seed)


def plan_line(trainer, cfg: RunConfig, samples: int | None, world) -> str:
    """What is about to be trained, in one line: samples, effective batch, steps, checkpoints."""
    steps = f"{trainer.args.max_steps} steps" if trainer.args.max_steps > 0 else f"{cfg.train.epochs:g} epoch(s)"
    saves = (f"a checkpoint every {trainer.args.save_steps} steps" if trainer.args.save_strategy != "no"
             else "no step checkpoints (train.save_steps: null)")
    minutes = f" and every {cfg.train.save_every_minutes:g} min" if cfg.train.save_every_minutes else ""
    processes = (f" ({cfg.train.batch_size} x {cfg.train.gradient_accumulation_steps} accumulation x "
                 f"{world.size} processes, {cfg.distributed.strategy})" if world.distributed else "")
    return (f"{samples if samples is not None else 'streamed'} samples, effective batch "
            f"{cfg.train.batch_size * cfg.train.gradient_accumulation_steps * world.size}{processes}, {steps}; "
            f"{saves}{minutes}, newest {cfg.train.keep_last} kept")


def build_trainer(model, tokenizer, cfg: RunConfig, train_dataset, eval_dataset, checkpoint_dir: Path,
                  report_to: list[str], extra_callbacks: list):
    """The run's method's TRL trainer (lora_ft/methods/), with lora-ft's arguments, callbacks and trainable dtype."""
    has_eval = eval_dataset is not None
    processes = distributed.current_world().size
    samples = len(train_dataset) if hasattr(train_dataset, "__len__") else 0  # a stream has max_steps instead
    save_steps = checkpoint_interval(cfg, optimizer_steps(cfg, samples, processes), has_eval)
    common = common_arguments(cfg, checkpoint_dir, has_eval, report_to, save_steps)
    callbacks = [StopAtPlannedEnd(), *extra_callbacks]
    if cfg.train.early_stopping_patience is not None and common.get("load_best_model_at_end"):
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=cfg.train.early_stopping_patience,
                                               early_stopping_threshold=cfg.train.early_stopping_threshold))
    trainer = method_of(cfg.method).build_trainer(model, tokenizer, cfg, train_dataset, eval_dataset, common,
                                                  callbacks)
    keep = trainable_dtype(cfg)
    if keep is not None:
        for param in trainer.model.parameters():
            if param.requires_grad and param.dtype != keep:
                param.data = param.data.to(keep)
    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    return trainer


def rewards_of(metrics: dict) -> dict:
    """A preference evaluation's reward accuracy (share of pairs whose chosen answer gets the higher implicit
    reward) and mean reward margin, as TRL logs them; an RL run's held-out mean reward and the share of its answers
    that stopped at the end-of-turn token; empty for SFT (and KTO, which has no pairs to compare)."""
    found = {"accuracy": metrics.get("eval_rewards/accuracies"), "margin": metrics.get("eval_rewards/margins"),
             "reward": metrics.get("eval_reward"), "stopped": metrics.get("eval_completions/stopped_ratio")}
    return {key: value for key, value in found.items() if value is not None}


def evaluation_line(metrics: dict) -> str:
    """An evaluation's headline: the eval loss, or an RL run's held-out reward and answers stopped."""
    if metrics.get("eval_loss") is not None:
        return f"eval loss: {metrics['eval_loss']:.4f}"
    return (f"held-out reward: {metrics.get('eval_reward', float('nan')):.4f} (answers ending at the end-of-turn "
            f"token: {metrics.get('eval_completions/stopped_ratio', float('nan')):.0%})")


def finish_complete_run(trainer) -> None:
    """What the trainer does after its last step, for a run resumed at that step: the best adapter when one is
    kept, and the end-of-training callbacks (progress bar, trackers)."""
    if trainer.args.load_best_model_at_end and trainer.state.best_model_checkpoint is not None:
        trainer._load_best_model()
    trainer.control = trainer.callback_handler.on_train_end(trainer.args, trainer.state, trainer.control)


def run_training(trainer, callbacks: LoopCallbacks, device: str, eval_before: bool, has_eval: bool,
                 trained_tokens_per_epoch: int, resume_from: Path | None = None,
                 start_adapter: str | None = None, method: str = "sft") -> TrainOutcome:
    """Evaluate the base, train (from ``resume_from`` when given), evaluate the result; return the numbers.

    ``start_adapter``: the run whose adapter training started from; "before" is then that model, not the base.
    ``callbacks`` are the ones :func:`build_trainer` gave the trainer. When their ``stop`` received a signal,
    training ends after a checkpoint and ``outcome.interrupted_by`` says which; the final evaluation is then left
    out.
    """
    outcome = TrainOutcome(trained_tokens_per_epoch=trained_tokens_per_epoch, method=method)
    history, stop = callbacks.history, callbacks.stop
    if device == "cuda":
        import torch

        torch.cuda.reset_peak_memory_stats()
    if resume_from is not None:
        before = [r for r in history.records if r.get("step") == 0 and ("eval_loss" in r or "eval_reward" in r)]
        outcome.eval_loss_before = before[0].get("eval_loss") if before else None
        outcome.rewards_before = rewards_of(before[0]) if before else {}
    elif has_eval and eval_before and start_adapter is not None:
        console.say(f"evaluating the starting model (the adapter of {start_adapter}) on the eval data ...")
        metrics = trainer.evaluate(metric_key_prefix="eval")
        outcome.eval_loss_before, outcome.rewards_before = metrics.get("eval_loss"), rewards_of(metrics)
        console.say(f"starting model {evaluation_line(metrics)}")
    elif has_eval and eval_before:
        console.say("evaluating the base model (adapter off) on the eval data ...")
        with trainer.model.disable_adapter():
            metrics = trainer.evaluate(metric_key_prefix="eval")
        outcome.eval_loss_before, outcome.rewards_before = metrics.get("eval_loss"), rewards_of(metrics)
        console.say(f"base model {evaluation_line(metrics)}")
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
    outcome.resumed_from_step = callbacks.progress.step_at_start if resume_from else None
    outcome.train_loss = training_loss if math.isfinite(training_loss) else None
    if resume_from is not None:  # the trainer averages this session's steps only; the run's mean is over all
        losses = [r["loss"] for r in history.records if "loss" in r and math.isfinite(r["loss"])]
        outcome.train_loss = sum(losses) / len(losses) if losses else None
    outcome.tokens_seen = int(trainer.state.num_input_tokens_seen)
    outcome.tokens_this_session = outcome.tokens_seen - callbacks.progress.tokens_at_start
    outcome.best_checkpoint = trainer.state.best_model_checkpoint
    outcome.stopped_early = trainer.state.global_step < trainer.state.max_steps
    outcome.interrupted_by = stop.signum
    committed = callbacks.keeper.committed
    outcome.checkpoint = committed[-1] if committed else None
    if has_eval and outcome.interrupted_by is None:
        metrics = trainer.evaluate(metric_key_prefix="eval")
        outcome.eval_loss_after, outcome.rewards_after = metrics.get("eval_loss"), rewards_of(metrics)
    outcome.peak_memory_bytes, outcome.peak_memory = peak_memory(device)
    outcome.log = history.records
    outcome.skipped_steps = list(callbacks.guard.skipped)
    return outcome
