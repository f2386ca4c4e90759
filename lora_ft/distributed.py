"""Several processes (GPUs, or CPU processes for testing): launched by torchrun, run by the trainer's Accelerate.

lora-ft does not coordinate processes itself. ``lora-ft train CONFIG --nproc N`` runs torchrun's agent for one
machine (:mod:`lora_ft.launching`); on a cluster, ``torchrun`` or ``accelerate launch`` start
``python -m lora_ft train CONFIG`` on each node (see ``scripts/slurm_train.sh``). Inside each process, the HF
Trainer (through Accelerate) sets up DDP or FSDP from the environment torchrun provides; this module only reads
that environment, gives the trainer the settings the chosen strategy needs, and keeps the run's decisions (stop on
a signal, save on a timer, no room to save) the same on every process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

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
            "cpu_ram_efficient_loading": device == "cuda",  # CUDA only (prepare_sharded_loading)
            "state_dict_type": "SHARDED_STATE_DICT",
            # Not FSDP's own activation checkpointing: its checkpoint wrappers put `_checkpoint_wrapped_module` into
            # the module names, which PEFT's save does not expect (it strips only FSDP1's `_fsdp_wrapped_module`,
            # peft/tuners/tuners_utils.py, _get_tuner_state_dict_key_prefixes), so the adapter was saved with no
            # tensors. The trainer's gradient checkpointing does the same work inside the layers, with no wrapper.
            "activation_checkpointing": False,
        }
        if device != "cuda":
            # CPU processes: the trainer keeps the process state lora-ft set up (shard_cpu_processes) instead of
            # building a new one, which Accelerate would make plain DDP on CPUs
            settings["accelerator_config"] = {"use_configured_state": True}
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


def start_process_group(world: World, device: str, timeout_minutes: float) -> None:
    """Start the processes' group before the model loads, with the run's collective timeout
    (distributed.timeout_minutes): a collective that waits longer for a process that died or froze fails instead of
    hanging. Started here because the trainer passes its ddp_timeout only on GPUs: on CPU processes it starts the
    group without one (transformers/training_args.py, the use_cpu branch of _setup_devices), and gloo's default is
    30 minutes. Accelerate's state, which the trainer and FSDP's loading use later, is this one."""
    if not world.distributed:
        return
    from datetime import timedelta

    from accelerate import PartialState

    PartialState(cpu=device != "cuda", backend="nccl" if device == "cuda" else "gloo",
                 timeout=timedelta(minutes=timeout_minutes))


def prepare_sharded_loading(strategy: str, world: World, device: str = "cuda") -> None:
    """Before the model loads, under FSDP in launched processes: start the process group. On CUDA GPUs with several
    processes, also ask transformers for CPU-RAM-efficient loading, so that only the first process reads the
    weights and the others build an empty (meta) model that FSDP fills when it shards; otherwise every process
    loads the whole model first. On CPUs, the process state is made one that shards (:func:`shard_cpu_processes`)."""
    if strategy != "fsdp" or not (world.distributed or world.launched):
        return
    if device == "cuda" and not world.distributed:
        return  # one launched GPU process: the trainer sets up its state itself
    from accelerate import PartialState

    if device == "cuda":
        os.environ["ACCELERATE_USE_FSDP"] = "true"
        os.environ["FSDP_CPU_RAM_EFFICIENT_LOADING"] = "true"
        PartialState()  # initialises torch.distributed from torchrun's environment, as the trainer would later
        return
    shard_cpu_processes(PartialState(cpu=True))


def shard_cpu_processes(state) -> None:
    """Let Accelerate's FSDP run on CPU processes (gloo), through the same code as on GPUs.

    Accelerate 1.16 gives the trainer's FSDP plugin to its state only for accelerator process types
    (``AcceleratorState.__init__``, accelerate/state.py lines 947-977: MULTI_GPU, MULTI_NPU, ...); for MULTI_CPU it
    drops the plugin without a word and the model is wrapped in DDP (accelerator.py line 2030). So the process
    state, once torch.distributed is up on gloo with the CPU as device, is given the GPU process type: the
    trainer, told to keep it (``accelerator_config.use_configured_state``), then takes the FSDP branch, which sets
    the type to FSDP, and every later step (fully_shard, gathers, sharded and full state dicts) is the GPU run's.
    Nothing else reads the type in between; the device and backend stay the CPU and gloo.
    """
    from accelerate.utils import DistributedType

    if state.distributed_type == DistributedType.MULTI_CPU:
        state.distributed_type = DistributedType.MULTI_GPU


def check_supported(cfg, world: World) -> None:
    """Refuse what the libraries cannot do with several processes, before anything is loaded."""
    if not (world.distributed or world.launched):
        return
    if cfg.distributed.strategy == "fsdp" and cfg.model.quantization == "int8":
        raise UserError("8-bit weights cannot be sharded by FSDP",
                        fix="use model.quantization: nf4 (QLoRA shards under FSDP) or none")
    if cfg.distributed.strategy == "fsdp" and world.distributed and cfg.train.optimizer in ("adamw_8bit",
                                                                                           "paged_adamw_8bit"):
        raise UserError(f"train.optimizer {cfg.train.optimizer} fails on FSDP's sharded (DTensor) parameters with "
                        "several processes", fix="use train.optimizer: auto (adamw_torch_fused)")
