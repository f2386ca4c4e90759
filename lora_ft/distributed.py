"""Several processes (GPUs, or CPU processes for testing): launched by torchrun, run by the trainer's Accelerate.

lora-ft does not launch or coordinate processes itself. ``lora-ft train CONFIG --nproc N`` hands the same command to
``torch.distributed.run`` (torchrun) for one machine; on a cluster, ``torchrun`` or ``accelerate launch`` start
``python -m lora_ft train CONFIG`` on each node (see ``scripts/slurm_train.sh``). Inside each process, the HF
Trainer (through Accelerate) sets up DDP or FSDP from the environment torchrun provides; this module only reads
that environment, gives the trainer the settings the chosen strategy needs, and keeps the run's decisions (stop on
a signal, save on a timer, no room to save) the same on every process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass

from lora_ft import console
from lora_ft.errors import UserError


@dataclass(frozen=True)
class World:
    rank: int = 0
    local_rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    launched: bool = False  # started by torchrun / accelerate launch (even as a single process)

    @property
    def distributed(self) -> bool:
        return self.size > 1


def current_world() -> World:
    """This process's place among the processes torchrun (or accelerate launch) started; one process otherwise."""
    return World(rank=int(os.environ.get("RANK", 0)), local_rank=int(os.environ.get("LOCAL_RANK", 0)),
                 size=int(os.environ.get("WORLD_SIZE", 1)), launched="WORLD_SIZE" in os.environ)


def launch(train_argv: list[str], nproc: int) -> int:
    """Run ``lora-ft train`` in ``nproc`` processes on this machine through torchrun; return its exit code."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "lora_ft", "train", *train_argv]
    console.say(f"launching {nproc} processes: {' '.join(command[2:])}")
    try:
        return subprocess.call(command)
    except KeyboardInterrupt:  # torchrun forwards the signal to the workers, which save and stop
        return 130


def trainer_settings(strategy: str, device: str, world: World, gradient_checkpointing: bool) -> dict:
    """The TrainingArguments a strategy needs; empty for one process that no launcher started (FSDP also runs
    in a single launched process, which is how its path is checked on one GPU)."""
    if not world.distributed and not (strategy == "fsdp" and world.launched):
        return {}
    settings = {
        "ddp_backend": "nccl" if device == "cuda" else "gloo",
        # Only LoRA weights train and every one of them gets a gradient: no search for unused parameters.
        "ddp_find_unused_parameters": False,
    }
    if strategy == "fsdp":
        settings["fsdp"] = "full_shard auto_wrap"
        settings["fsdp_config"] = {
            # FSDP2 (transformers 5's default; its FSDP1 keys such as use_orig_params or prefetch are ignored).
            # Parameters are sharded per tensor (DTensor): frozen 4-bit weights, stored in the compute dtype
            # (bnb_4bit_quant_storage), and trainable LoRA weights live side by side in one unit.
            "version": 2,
            "reshard_after_forward": True,
            "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",  # one unit per decoder layer (the model's no-split list)
            "cpu_ram_efficient_loading": True,
            "state_dict_type": "SHARDED_STATE_DICT",
            # FSDP's own activation checkpointing replaces the trainer's: the trainer refuses both at once
            "activation_checkpointing": bool(gradient_checkpointing),
        }
    return settings


def agree(flags: list[bool], world: World) -> list[bool]:
    """Each flag true on every process when it is true on any one (one tiny all-reduce per call)."""
    if not world.distributed:
        return flags
    import torch
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        return flags
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    tensor = torch.tensor([1 if f else 0 for f in flags], dtype=torch.int32, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return [bool(v) for v in tensor.tolist()]


def barrier(world: World) -> None:
    if not world.distributed:
        return
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def finish(world: World) -> None:
    """Leave the process group once the work is done, so no process exits while collective threads still run
    (a process that does may abort at exit: 'terminate called without an active exception')."""
    import torch.distributed as dist

    if world.distributed and dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def prepare_sharded_loading(strategy: str, world: World) -> None:
    """Before the model loads, under FSDP with several processes: start the process group and ask transformers
    for CPU-RAM-efficient loading, so that only the first process reads the weights and the others build an empty
    (meta) model that FSDP fills when it shards. Otherwise every process loads the whole model first."""
    if strategy != "fsdp" or not world.distributed:
        return
    os.environ["ACCELERATE_USE_FSDP"] = "true"
    os.environ["FSDP_CPU_RAM_EFFICIENT_LOADING"] = "true"
    from accelerate import PartialState

    PartialState()  # initialises torch.distributed from torchrun's environment, as the trainer would later


def check_supported(cfg, world: World) -> None:
    """Refuse what the libraries cannot do with several processes, before anything is loaded."""
    if not (world.distributed or world.launched):
        return
    if cfg.distributed.strategy == "fsdp" and cfg.train.device != "cuda":
        raise UserError("distributed.strategy fsdp needs CUDA GPUs",
                        fix="use distributed.strategy: ddp (it also runs on CPU processes)")
    if cfg.distributed.strategy == "fsdp" and cfg.model.quantization == "int8":
        raise UserError("8-bit weights cannot be sharded by FSDP",
                        fix="use model.quantization: nf4 (QLoRA shards under FSDP) or none")
    if cfg.distributed.strategy == "fsdp" and world.distributed and cfg.train.optimizer in ("adamw_8bit",
                                                                                           "paged_adamw_8bit"):
        raise UserError(f"train.optimizer {cfg.train.optimizer} fails on FSDP's sharded (DTensor) parameters with "
                        "several processes", fix="use train.optimizer: auto (adamw_torch_fused)")


def launch_training(args) -> int:
    """``lora-ft train CONFIG --nproc N``: the same command in N processes on this machine (torchrun)."""
    if args.nproc < 1:
        raise UserError(f"--nproc {args.nproc}: the number of processes must be at least 1", fix="--nproc 2")
    if current_world().distributed:
        raise UserError("--nproc was given inside a launcher that already started several processes",
                        fix="drop --nproc when running under torchrun or accelerate launch")
    argv = [args.config, *(a for o in args.overrides for a in ("--set", o)), "--resume", args.resume,
            *(["--force-resume"] if args.force_resume else []), *(["--no-cache"] if args.no_cache else [])]
    return launch(argv, args.nproc)
