"""Where one training step's time goes: a few real `lora-ft train` steps of a config under PyTorch's profiler,
every operator's own time put in one of a few parts of the step.

    python scripts/profile_step.py                              # the legal SFT config on the embedded model
    python scripts/profile_step.py configs/legal_dpo.yaml --set model.adapter=null
    python scripts/profile_step.py --steps 2 --set train.batch_size=1   # shorter

The parts (by operator, forward and backward together):
- linear layers, frozen: matrix products with no dimension equal to the LoRA rank (attention projections, MLP);
- LoRA matmuls: matrix products with a dimension equal to the LoRA rank (lora_A, lora_B, forward and backward);
- LoRA dropout: the random masks and their products;
- attention: scaled dot-product attention, forward and backward;
- LM head and loss: the output projection and the cross entropy (the products with a vocabulary-sized
  dimension, log-softmax, NLL);
- optimizer: AdamW's update (foreach kernels) and gradient clipping;
- norms, rotary, activations, copies and the rest: every other operator.
The first step is a warm-up and is not profiled. Prints the machine (CPU flags or GPU name) with the table.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

PARTS = ("linear layers, frozen", "LoRA matmuls", "LoRA dropout", "attention", "LM head and loss", "optimizer",
         "norms, rotary, activations, copies and the rest")


def part_of(name: str, shapes, rank: int, vocab: int) -> str:
    lowered = name.lower()
    dims = {d for shape in shapes or () for d in (shape or ())}
    if "adam" in lowered or "_foreach" in lowered or "clip_grad" in lowered or "optimizer" in lowered:
        return "optimizer"
    if "attention" in lowered or "sdpa" in lowered or "scaled_dot_product" in lowered:
        return "attention"
    if "log_softmax" in lowered or "nll_loss" in lowered or "cross_entropy" in lowered:
        return "LM head and loss"
    if "bernoulli" in lowered or "dropout" in lowered:
        return "LoRA dropout"
    if lowered in ("aten::mm", "aten::addmm", "aten::bmm", "aten::linear", "aten::matmul"):
        if vocab in dims:
            return "LM head and loss"
        if rank in dims:
            return "LoRA matmuls"
        return "linear layers, frozen"
    return "norms, rotary, activations, copies and the rest"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", default=str(REPO / "configs" / "legal_domain.yaml"))
    parser.add_argument("--steps", type=int, default=3, help="profiled optimizer steps after one warm-up step")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()

    import torch
    from torch.profiler import ProfilerActivity, profile
    from transformers import TrainerCallback

    from bench import cpu_flags
    from lora_ft import console, training
    from lora_ft import model as model_lib
    from lora_ft.config import load_config, resolve
    from lora_ft.preparation import prepare

    console.quiet_libraries()
    loaded = load_config(args.config, args.overrides)
    resolved = resolve(loaded)
    cfg = resolved.config
    cfg.train.max_steps, cfg.train.logging_steps, cfg.train.save_steps = args.steps + 1, 1, None
    cfg.train.eval_before_training, cfg.train.early_stopping_patience = False, None
    with console.held_back():
        prepared = prepare(loaded, cfg)
    profiler = profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available()
                                                              else []), record_shapes=True)
    clock: dict = {}

    class StartAfterWarmUp(TrainerCallback):
        def on_step_end(self, targs, state, control, **kwargs):
            if state.global_step == 1:
                profiler.start()
                clock["start"] = time.perf_counter()

    with tempfile.TemporaryDirectory(prefix="lora-ft-profile-") as scratch, console.silenced():
        training.prepare_process(cfg)
        trainable = model_lib.load_for_training(prepared.chat.source, cfg, resolved.device, prepared.stop_ids)
        train_set, _ = prepared.datasets()
        trainer = training.build_trainer(trainable.model, prepared.chat.tokenizer, cfg, train_set, None,
                                         Path(scratch), ["none"], [StartAfterWarmUp()])
        trainer.train()
        profiler.stop()
        wall = time.perf_counter() - clock["start"]
    rank, vocab = cfg.lora.r, trainable.model.get_output_embeddings().weight.shape[0]
    totals: dict[str, float] = defaultdict(float)
    for event in profiler.key_averages(group_by_input_shape=True):
        totals[part_of(event.key, event.input_shapes, rank, vocab)] += event.self_cpu_time_total / 1e6
    measured = sum(totals.values())
    machine = (f"GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available()
               else f"CPU, {torch.get_num_threads()} threads, flags: {cpu_flags()}")
    print(f"machine: {machine}; torch {torch.__version__}")
    print(f"config: {args.config} {' '.join('--set ' + o for o in args.overrides)}".rstrip())
    print(f"{args.steps} profiled steps in {wall:.1f} s ({wall / args.steps:.2f} s per step, profiler overhead "
          "included); operator time by part of the step:\n")
    print("| part | seconds per step | share |\n| --- | --- | --- |")
    for part in PARTS:
        print(f"| {part} | {totals[part] / args.steps:.2f} | {100 * totals[part] / measured:.0f}% |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
