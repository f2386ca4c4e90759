"""Pre-flight estimate: peak memory and time per epoch of a run, before it starts.

The estimate is arithmetic on the model's shape (read from its config.json, no weights loaded), the resolved
settings and the data's token count:

- weights at their stored size: NF4 about 0.52 byte per parameter (4 bits, plus absmax constants after double
  quantization), int8 about 1 byte, otherwise the dtype's size; embeddings, norms and a separate output head stay in
  the compute dtype (QLoRA does not upcast them: it trains under autocast);
- LoRA parameters with their gradients and optimizer state (AdamW: two fp32 moments; 8-bit AdamW: two bytes);
- activations kept for the backward pass, per token and layer (all of them, or only each layer's input with
  gradient checkpointing plus one layer recomputed);
- the logits of a micro-batch, in fp32, with their log-softmax and gradient (preference methods on packed rows:
  of its answer tokens only, at the data's share of answer tokens);
- a fixed runtime overhead (the CUDA context, or the Python process and its libraries on a CPU).

With several processes (``--nproc N``) the estimate is per process. Under DDP every process holds all of the above;
under FSDP (FSDP2: every parameter a DTensor sharded along its first dimension) the weights, the LoRA weights, their
gradients and the optimizer state are 1/N each, and for the computation a process gathers the whole embeddings (the
root unit) and two decoder layers (the one computing and the next, prefetched); activations and logits are not
sharded. A 4-bit model is first loaded whole by every process before FSDP shards it (as transformers loads it), a
peak of its own. Time per epoch divides by N (communication left out).

``--measure`` runs a few real steps and reports the estimate's error against the measured peak; its step time
replaces the assumed throughput in the time estimate.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from lora_ft import console
from lora_ft.methods import method_of
from lora_ft.config import RunConfig
from lora_ft.errors import UserError
from lora_ft import families
from lora_ft.families import ModelShape

GiB = 2**30
NF4_BYTES = 0.5 + 4 / 64 / 4 + 4 / (64 * 256)  # 4-bit values, 8-bit absmax per 64 values, fp32 per 256 absmax
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
CUDA_OVERHEAD = 0.6 * GiB  # CUDA context and kernels
CPU_OVERHEAD = 1.1 * GiB  # Python, torch, transformers and friends, resident
# Dense 16-bit peak TFLOP/s by GPU name fragment, and the share of it LoRA training reaches in practice.
GPU_PEAK_TFLOPS = {"H200": 989, "H100": 989, "A100": 312, "L40": 181, "4090": 165, "A10": 125, "L4": 121,
                   "V100": 125, "3090": 71, "T4": 65}
ASSUMED_MFU = {"none": 0.35, "nf4": 0.25, "int8": 0.2}
CPU_GFLOPS_PER_CORE = 25.0  # float32, measured order of magnitude on current x86 cores
NAMED_GPUS = {"24": 24, "40": 40, "48": 48, "80": 80, "141": 141}


def shape_from_config(config: dict) -> ModelShape:
    """The dimensions and linear layers of a model, from its config.json, as its family reads them."""
    return families.decoder_family(config).shape(config)


@dataclass
class Estimate:
    """Peak memory in bytes by component, and time."""

    weights: float
    lora_states: float
    activations: float
    logits: float
    overhead: float
    lora_params: int
    tokens_per_micro_batch: int
    flops_per_token: float
    seconds_per_epoch: float | None = None
    throughput_note: str = ""
    processes: int = 1
    sharded: bool = False  # FSDP over several processes: weights and LoRA states are 1/processes each
    gathered: float = 0.0  # FSDP: whole embeddings and two decoder layers, gathered for the computation
    loading_peak: float = 0.0  # FSDP with 4-bit weights: the whole quantized model, before it is sharded

    @property
    def total(self) -> float:
        return self.weights + self.gathered + self.lora_states + self.activations + self.logits + self.overhead

    @property
    def peak(self) -> float:
        return max(self.total, self.loading_peak)


def lora_param_count(shape: ModelShape, cfg: RunConfig) -> int:
    targets = cfg.lora.target_modules
    chosen = [(i, o) for name, (i, o) in shape.linear.items()
              if targets == "all-linear" or any(name.endswith(t) or name.split(".")[-1] == t for t in targets)]
    layers = min(cfg.lora.top_n_layers or shape.layers, shape.layers)
    return layers * sum(cfg.lora.r * (i + o) for i, o in chosen)


def estimate(shape: ModelShape, cfg: RunConfig, tokens_per_epoch: int, device_name: str = "cpu",
             cpu_cores: int | None = None, longest_sample: int | None = None, processes: int = 1,
             answer_share: float = 1.0) -> Estimate:
    """Estimate peak memory per process and time per epoch for the resolved config ``cfg`` (no ``auto`` left in
    it) on ``processes`` processes. ``answer_share``: the share of the data's tokens in answers, where only they
    go through the LM head (preference methods on packed rows)."""
    compute = DTYPE_BYTES[cfg.model.dtype]
    quant = cfg.model.quantization
    per_linear = {"nf4": NF4_BYTES, "int8": 1.06, "none": compute}[quant]
    weights = shape.linear_params * per_linear + (shape.embedding_params + shape.layers * 3 * shape.hidden) * compute

    lora = lora_param_count(shape, cfg)
    # adapters: bf16 for QLoRA in bf16 (as TRL stores them), fp32 otherwise (fp16 runs keep fp32 for the scaler)
    param_bytes = 2 if quant != "none" and cfg.model.dtype == "bfloat16" else 4
    optimizer_bytes = 2 if "8bit" in cfg.train.optimizer else 8
    lora_states = lora * (2 * param_bytes + optimizer_bytes)

    # Worst case: a micro-batch of the longest samples (packing fills every row to max_seq_length)
    length = cfg.data.max_seq_length if cfg.train.packing or not longest_sample else \
        min(cfg.data.max_seq_length, longest_sample)
    tokens = cfg.train.batch_size * length * sequences_per_sample(cfg)
    h, i, kv = shape.hidden, shape.intermediate, shape.kv_heads * shape.head_dim
    act = compute if cfg.model.dtype != "float32" else 4
    full_layer = act * (10 * h + 4 * kv + 5 * i) + 4 * 2 * h  # kept tensors per token; norms in fp32
    if cfg.model.gradient_checkpointing:
        activations = tokens * (shape.layers * act * h + full_layer)
    else:
        activations = tokens * shape.layers * full_layer
    logits = tokens * shape.vocab * (act + 3 * 4)  # logits, fp32 upcast, log-softmax, its gradient
    if method_of(cfg.method).pairs and cfg.train.padding_free:  # packed pairs: answer positions only, in fp32
        logits = tokens * answer_share * shape.vocab * 3 * 4  # logits, log-softmax, its gradient

    body = shape.linear_params + shape.vocab * h  # matmul parameters a token passes through, head included
    flops = 4 * body + 6 * lora + 4 * shape.layers * length / 2 * h * 3  # fwd + bwd, plus attention
    if cfg.model.gradient_checkpointing:
        flops += 2 * body
    flops += 2 * body * reference_forwards(cfg)
    flops += 2 * body * method_of(cfg.method).generation_forwards(cfg)  # sampling the answers (RL)
    overhead = CUDA_OVERHEAD if device_name != "cpu" else CPU_OVERHEAD
    result = Estimate(weights=weights, lora_states=lora_states, activations=activations, logits=logits,
                      overhead=overhead, lora_params=lora, tokens_per_micro_batch=tokens, flops_per_token=flops,
                      processes=processes)
    if cfg.distributed.strategy == "fsdp" and processes > 1:
        layer = shape.linear_params / shape.layers * per_linear + 2 * h * compute
        result.sharded, result.weights, result.lora_states = True, weights / processes, lora_states / processes
        result.gathered = shape.embedding_params * compute + 2 * layer
        result.loading_peak = weights + overhead if quant != "none" else 0.0
    if device_name == "cpu":
        cores = cpu_cores or os.cpu_count() or 1
        rate = CPU_GFLOPS_PER_CORE * 1e9 * cores
        result.throughput_note = f"assumed {CPU_GFLOPS_PER_CORE:g} GFLOP/s per core x {cores} cores (float32)"
    else:
        peak = next((v for k, v in GPU_PEAK_TFLOPS.items() if k in device_name), None)
        if peak is None:
            result.throughput_note = f"no throughput figure for {device_name}: use --measure"
            return result
        rate = peak * 1e12 * ASSUMED_MFU[quant]
        result.throughput_note = f"assumed {ASSUMED_MFU[quant]:.0%} of {device_name}'s {peak} TFLOP/s"
    result.seconds_per_epoch = tokens_per_epoch * flops / rate / processes
    return result


def suggestions(shape: ModelShape, cfg: RunConfig, tokens: int, device: str, budget: float,
                longest_sample: int | None = None, processes: int = 1) -> list[str]:
    """Settings that bring the estimate under ``budget`` bytes, each with its new estimate."""
    out = []
    tries = []
    if cfg.model.quantization == "none" and device != "cpu":
        tries.append(("model.quantization=nf4", {"model": {"quantization": "nf4"}}))
    if not cfg.model.gradient_checkpointing:
        tries.append(("model.gradient_checkpointing=true", {"model": {"gradient_checkpointing": True}}))
    if cfg.train.batch_size > 1:
        half = cfg.train.batch_size // 2
        tries.append((f"train.batch_size={half} train.gradient_accumulation_steps="
                      f"{cfg.train.gradient_accumulation_steps * 2} (same effective batch)",
                      {"train": {"batch_size": half,
                                 "gradient_accumulation_steps": cfg.train.gradient_accumulation_steps * 2}}))
    if cfg.data.max_seq_length > 512:
        tries.append((f"data.max_seq_length={cfg.data.max_seq_length // 2}",
                      {"data": {"max_seq_length": cfg.data.max_seq_length // 2}}))
    current = cfg
    for label, change in tries:
        updated = current.model_copy(deep=True)
        for section, values in change.items():
            part = getattr(updated, section)
            for key, value in values.items():
                setattr(part, key, value)
        total = estimate(shape, updated, tokens, device, longest_sample=longest_sample, processes=processes).peak
        out.append(f"--set {label}: about {total / GiB:.1f} GiB")
        current = updated
        if total <= budget:
            break
    return out


@dataclass
class Plan:
    estimate: Estimate
    device: str
    budget_bytes: float
    budget_label: str
    tokens_per_epoch: int
    steps_per_epoch: int
    fixes: list[str]
    measured_peak: float | None = None
    measured_step_seconds: float | None = None
    method_note: str = ""
    processes_note: str = ""

    def compared_estimate(self) -> tuple[float, str]:
        """The part of the estimate that the measured peak counts too, and what that measurement is. A GPU's peak
        is what torch allocated for tensors (max_memory_allocated): the CUDA context and the allocator's cache are
        outside it, so the runtime overhead is left out of the estimate it is compared with. A CPU's peak is the
        process's resident memory, overhead included."""
        if self.device == "cpu":
            return self.estimate.total, "resident memory"
        return self.estimate.total - self.estimate.overhead, "allocated by tensors; runtime overhead left out"

    @property
    def fits(self) -> bool:
        return self.estimate.peak <= self.budget_bytes

    def render(self) -> str:
        e = self.estimate
        share = f" (1/{e.processes} shard)" if e.sharded else ""
        rows = [(f"weights{share}", e.weights)] + ([("gathered: embeddings + 2 layers", e.gathered)] if e.sharded
                                                   else [])
        rows += [(f"LoRA weights, gradients, optimizer{share}", e.lora_states), ("activations", e.activations),
                 ("logits", e.logits), ("runtime overhead", e.overhead)]
        each = f", per process of {e.processes}" if e.processes > 1 else ""
        lines = [f"peak memory estimate ({self.device}{each}; micro-batch {e.tokens_per_micro_batch:,} tokens at "
                 "most):"]
        lines = ([self.method_note] if self.method_note else []) + ([self.processes_note] if self.processes_note
                                                                    else []) + lines
        width = max(36, *(len(name) for name, _ in rows))
        lines += [f"  {name:<{width}} {value / GiB:7.2f} GiB" for name, value in rows]
        lines.append(f"  {'total':<{width}} {e.total / GiB:7.2f} GiB   of {self.budget_label}")
        if e.loading_peak:
            loading = "loading: the whole 4-bit model"
            lines.append(f"  {loading:<{width}} {e.loading_peak / GiB:7.2f} GiB   (every process quantizes its own "
                         "copy before FSDP shards it)")
        lines.append(f"LoRA parameters: {e.lora_params:,}")
        if self.measured_peak is not None:
            compared, what = self.compared_estimate()
            error = (compared - self.measured_peak) / self.measured_peak
            lines.append(f"measured peak ({self.device}, {what}): {self.measured_peak / GiB:.2f} GiB against "
                         f"{compared / GiB:.2f} GiB estimated; estimate error {error:+.0%}")
        if self.measured_step_seconds is not None:
            seconds = self.measured_step_seconds * self.steps_per_epoch
            lines.append(f"time per epoch: about {_duration(seconds)} ({self.steps_per_epoch} steps x "
                         f"{self.measured_step_seconds:.1f} s measured)")
        elif e.seconds_per_epoch is not None:
            lines.append(f"time per epoch: about {_duration(e.seconds_per_epoch)} for {self.tokens_per_epoch:,} "
                         f"tokens ({e.throughput_note}; --measure times real steps)")
        else:
            lines.append(f"time per epoch: {e.throughput_note}")
        if self.fits:
            lines.append(f"fits: yes ({(self.budget_bytes - e.peak) / GiB:.1f} GiB to spare)")
        else:
            lines.append(f"fits: NO, about {(e.peak - self.budget_bytes) / GiB:.1f} GiB over. Settings that fit:")
            lines += [f"  {fix}" for fix in self.fixes] or ["  none found: use a smaller model or a larger GPU"]
        return "\n".join(lines)


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


def device_budget(device: str, gpu: str | None) -> tuple[float, str, str]:
    """(bytes available, label, device name) for a named GPU size, the detected GPU, or this machine's RAM."""
    if gpu:
        gb = NAMED_GPUS.get(gpu.rstrip("GgBb"))
        if gb is None:
            raise UserError(f"unknown --gpu {gpu}", fix=f"use one of {', '.join(NAMED_GPUS)} (GB)")
        return gb * 1e9, f"a {gb} GB GPU", {80: "H100", 40: "A100", 24: "4090", 48: "L40", 141: "H200"}[gb]
    if device == "cuda":
        import torch

        props = torch.cuda.get_device_properties(0)
        return props.total_memory, f"{props.name} ({props.total_memory / GiB:.0f} GiB)", props.name
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return total, f"this machine's {total / GiB:.0f} GiB RAM", "cpu"


def read_shape(model_dir: str) -> ModelShape:
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise UserError(f"no config.json for the model at {model_dir}", fix="plan needs a local or embedded model")
    return shape_from_config(json.loads(path.read_text()))


def sequences_per_sample(cfg: RunConfig) -> int:
    """Sequences one training sample puts in a micro-batch: a pair's chosen and rejected answer go together."""
    return method_of(cfg.method).sequences_per_sample


def reference_forwards(cfg: RunConfig) -> int:
    """Forward passes without gradient per trained token, beside the policy's: a reference's (unless precomputed)
    and any estimate the method makes (KTO's KL term), as the method counts them."""
    return method_of(cfg.method).reference_forwards(cfg)


@dataclass
class SampledTokens:
    """An RL run's tokens per epoch: its prompts and the answers it will sample, counted at full length."""

    tokens: int


def make_plan(resolved_cfg: RunConfig, shape: ModelShape, tokens_per_epoch: int, samples: int, device: str,
              gpu: str | None = None, longest_sample: int | None = None, processes: int = 1,
              answer_share: float = 1.0) -> Plan:
    budget, label, name = device_budget(device, gpu)
    if gpu and resolved_cfg.train.device == "cpu":  # planning for a GPU from a CPU machine: decide as on the GPU
        resolved_cfg = resolved_cfg.model_copy(deep=True)
        resolved_cfg.model.dtype = "bfloat16" if resolved_cfg.model.dtype == "float32" else resolved_cfg.model.dtype
    est = estimate(shape, resolved_cfg, tokens_per_epoch, name, longest_sample=longest_sample, processes=processes,
                   answer_share=answer_share)
    effective = resolved_cfg.train.batch_size * resolved_cfg.train.gradient_accumulation_steps * processes
    steps = max(1, -(-samples // effective))
    fixes = [] if est.peak <= budget else suggestions(shape, resolved_cfg, tokens_per_epoch, name, budget,
                                                      longest_sample, processes)
    note = ""
    if method_of(resolved_cfg.method).prompts:
        settings = resolved_cfg.method_settings
        forwards = reference_forwards(resolved_cfg)
        note = (f"method {resolved_cfg.method}: {samples // settings.num_generations:,} prompts x "
                f"{settings.num_generations} sampled answers of up to {settings.max_completion_length} tokens, "
                "counted at full length; sampling counted as one forward pass per token (decoding one token at a "
                "time runs below that rate: --measure times real steps)"
                + (f"; {forwards} reference forward pass per sequence (KL)" if forwards else "; no reference"))
    elif method_of(resolved_cfg.method).pairs:
        forwards = reference_forwards(resolved_cfg)
        note = (f"method {resolved_cfg.method}: {samples:,} " + ("pairs" if sequences_per_sample(resolved_cfg) == 2
                                                                 else "answers")
                + (", chosen and rejected side by side in each micro-batch" if sequences_per_sample(resolved_cfg) == 2
                   else "") + (f"; {forwards} forward pass(es) without gradient per sequence (reference"
                               f"{', KL estimate' if forwards > 1 else ''})" if forwards else "; no reference"))
    return Plan(est, name, budget, label, tokens_per_epoch, steps, fixes, method_note=note,
                processes_note=_processes_note(resolved_cfg, processes))


def _processes_note(cfg: RunConfig, processes: int) -> str:
    if processes == 1:
        return ""
    if cfg.distributed.strategy == "fsdp":
        return (f"fsdp over {processes} processes: weights, LoRA weights, gradients and optimizer state sharded 1/"
                f"{processes}; activations and logits whole in every process; effective batch x{processes}")
    return (f"ddp over {processes} processes: every process holds the whole model and its own micro-batch; "
            f"effective batch x{processes}")


def measure(prepared, resolved, steps: int = 4) -> tuple[float, float]:
    """Run a few real training steps on the prepared data in a scratch directory: (peak memory bytes, seconds per
    optimizer step). The first step is left out of the timing (warm-up); nothing is evaluated or saved."""
    import tempfile

    from lora_ft import model as model_lib
    from lora_ft import training

    cfg = resolved.config.model_copy(deep=True)
    cfg.train.max_steps, cfg.train.logging_steps, cfg.train.save_steps = steps, 1, None
    cfg.train.eval_before_training, cfg.train.early_stopping_patience = False, None
    if cfg.train.lr_scheduler == "reduce_on_plateau":
        cfg.train.lr_scheduler = "constant"
    with console.silenced(), tempfile.TemporaryDirectory(prefix="lora-ft-plan-") as scratch:
        training.prepare_process(cfg)
        model = model_lib.load_for_training(prepared.chat.source, cfg, resolved.device, prepared.stop_ids)
        train_set, _ = prepared.datasets()
        history = training.LogHistory()
        trainer = training.build_trainer(model.model, prepared.chat.tokenizer, cfg, train_set, None, Path(scratch),
                                         ["none"], [history])
        if resolved.device == "cuda":
            import torch

            torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - started
    times = [r["time"] for r in history.records if "loss" in r and "eval_loss" not in r]
    per_step = (times[-1] - times[0]) / (len(times) - 1) if len(times) > 1 else seconds / steps
    return float(training.peak_memory(resolved.device)[0]), per_step
