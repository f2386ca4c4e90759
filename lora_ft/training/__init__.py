"""The training loop: the trainer's arguments, the callbacks inside the loop, and one session of it."""

from lora_ft.training.arguments import (checkpoint_interval, fsdp_active, keeps_best, mixed_precision, optimizer_steps,
                                        reuse_freed_memory, sft_config, trainable_dtype)
from lora_ft.training.callbacks import (CheckpointKeeper, CheckpointNoSpace, LogHistory, LoopCallbacks,
                                        NonFiniteGradients, NonFiniteGuard, ProgressBar, StopAtPlannedEnd,
                                        StopRequest, TrainingAlreadyComplete, loop_callbacks)
from lora_ft.training.loop import (TrainOutcome, build_trainer, peak_memory, plan_line, prepare_process,
                                   run_training)
from lora_ft.training.preference import drop_reference

__all__ = ["CheckpointKeeper", "CheckpointNoSpace", "LogHistory", "LoopCallbacks", "NonFiniteGradients",
           "NonFiniteGuard", "ProgressBar", "StopAtPlannedEnd", "StopRequest", "TrainOutcome",
           "TrainingAlreadyComplete", "build_trainer", "checkpoint_interval", "drop_reference", "fsdp_active",
           "keeps_best",
           "loop_callbacks", "mixed_precision", "optimizer_steps", "peak_memory", "plan_line", "prepare_process",
           "reuse_freed_memory", "run_training", "sft_config", "trainable_dtype"]
