"""The training loop: the trainer's arguments, the callbacks inside the loop, and one session of it."""

from lora_ft.training.arguments import (checkpoint_interval, common_arguments, keeps_best,
                                        mixed_precision, optimizer_steps, reuse_freed_memory, trainable_dtype)
from lora_ft.training.callbacks import (CheckpointKeeper, CheckpointNoSpace, LogHistory, LoopCallbacks,
                                        NonFiniteGradients, NonFiniteGuard, ProgressBar, StopAtPlannedEnd,
                                        StopRequest, TrainingAlreadyComplete, loop_callbacks)
from lora_ft.training.loop import (TrainOutcome, build_trainer, peak_memory, plan_line, prepare_process,
                                   run_training)

__all__ = ["CheckpointKeeper", "CheckpointNoSpace", "LogHistory", "LoopCallbacks", "NonFiniteGradients",
           "NonFiniteGuard", "ProgressBar", "StopAtPlannedEnd", "StopRequest", "TrainOutcome",
           "TrainingAlreadyComplete", "build_trainer", "checkpoint_interval", "common_arguments",
           "keeps_best",
           "loop_callbacks", "mixed_precision", "optimizer_steps", "peak_memory", "plan_line", "prepare_process",
           "reuse_freed_memory", "run_training", "trainable_dtype"]
