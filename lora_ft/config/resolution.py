"""Turning the config's ``auto`` values into concrete settings for the device at hand.

The resolved config -- every default filled in, every ``auto`` decided -- is what is printed at the start of a
run and saved with it, so a run directory says exactly what ran.
"""

from __future__ import annotations

import importlib.util

from dataclasses import dataclass
from pathlib import Path

from lora_ft.adapter_files import check_adapter_files
from lora_ft.config.attention import resolve_attention
from lora_ft.config.checks import cpu_precision_problems
from lora_ft.config.loaded import LoadedConfig
from lora_ft.config.schema import RunConfig
from lora_ft.methods import method_of
from lora_ft.errors import UserError
from lora_ft.config.cpu_precision import cpu_bf16_verdict


@dataclass
class Resolved:
    config: RunConfig  # with every auto value decided
    device: str  # "cuda" or "cpu"
    notes: list[str]  # one line per decision worth saying

    @property
    def quantized(self) -> bool:
        return self.config.model.quantization in ("nf4", "int8")


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _cuda_supports_bf16() -> bool:
    import torch

    if not torch.cuda.is_available():  # deciding for a GPU machine from one without: assume a current GPU
        return True
    return torch.cuda.is_bf16_supported()


def resolve(loaded: LoadedConfig, has_cuda: bool | None = None) -> Resolved:
    """Decide device, quantization, dtype, checkpointing, optimizer and names; say the decisions worth saying."""
    cfg = loaded.config.model_copy(deep=True)
    has_cuda = cuda_available() if has_cuda is None else has_cuda
    notes: list[str] = []
    if cfg.train.device == "cuda" and not has_cuda:
        raise UserError("train.device is 'cuda' but no CUDA GPU is visible",
                        fix="set train.device: auto (or cpu), or check the GPU driver and CUDA_VISIBLE_DEVICES")
    device = "cuda" if (cfg.train.device == "cuda" or (cfg.train.device == "auto" and has_cuda)) else "cpu"
    cfg.train.device = device

    model = cfg.model
    quantization_chosen = model.quantization == "auto"
    if quantization_chosen:
        model.quantization = "nf4" if device == "cuda" else "none"
    if model.dtype == "auto":
        if device == "cuda":
            model.dtype = "bfloat16" if _cuda_supports_bf16() else "float16"
        elif model.quantization == "none" and (verdict := cpu_bf16_verdict()).fast:
            model.dtype = "bfloat16"
            notes.append(f"bfloat16 base weights: {verdict.describe()}; the LoRA weights and the optimizer stay in "
                         "float32 (model.dtype: float32 to train in float32)")
        else:
            model.dtype = "float32"
    elif device == "cpu" and model.dtype == "bfloat16" and not (verdict := cpu_bf16_verdict()).fast:
        notes.append(f"bfloat16 on this CPU is slower than float32 ({verdict.describe()}): model.dtype: auto "
                     "picks float32 here")
    if quantization_chosen and device == "cpu":
        notes.append(f"no CUDA GPU: training on the CPU in {model.dtype} without quantization "
                     "(set model.quantization: nf4 for QLoRA on the CPU)")
    if device == "cpu" and (problems := cpu_precision_problems(model)):
        _key, what, fix = problems[0]
        raise UserError(what, fix=fix)
    # The kernel the model's class supports (config/attention.py). FlashAttention-2 runs padding-free batches as
    # variable-length sequences with no mask at all; SDPA runs them one sample at a time (model/attention.py).
    attention = resolve_attention(loaded, device, model.dtype)
    model.attn_implementation = attention.implementation
    notes.append(attention.describe())
    if model.gradient_checkpointing is None:
        model.gradient_checkpointing = model.quantization in ("nf4", "int8") and device == "cuda"
    if cfg.train.optimizer == "auto":
        cfg.train.optimizer = "adamw_torch_fused" if device == "cuda" else "adamw_torch"
    liger = importlib.util.find_spec("liger_kernel") is not None
    if cfg.train.fused_kernels == "auto":
        cfg.train.fused_kernels = device == "cuda" and liger
    elif cfg.train.fused_kernels and device != "cuda":
        raise UserError("train.fused_kernels: true needs a CUDA GPU (Liger's kernels are Triton kernels)",
                        fix="set train.fused_kernels: auto (or false)")
    elif cfg.train.fused_kernels and not liger:
        raise UserError("train.fused_kernels: true needs liger-kernel, which is not installed",
                        fix="pip install 'lora-ft[gpu]' (or liger-kernel), or set train.fused_kernels: auto")
    if cfg.output_dir is None:
        stem = loaded.path.stem if loaded.path is not None else "run"
        cfg.output_dir = str(Path("runs") / stem)
    # Every path is expanded here, once: `~` means the home folder everywhere (no shell expands it in a YAML
    # file), and a relative run directory is fixed against the current directory, so the run's mark, its
    # checkpoints and its logs all land in one folder however the libraries below treat paths.
    cfg.output_dir = str(Path(cfg.output_dir).expanduser().absolute())
    if cfg.tracking.run_name is None:
        cfg.tracking.run_name = Path(cfg.output_dir).name
    if cfg.data.eval:
        cfg.data.eval_fraction = 0.0
    # Local paths become absolute, so the saved config means the same files wherever it is read from; a name
    # that is no local path (a hub id) stays as written.
    for source in [*cfg.data.train, *cfg.data.eval]:
        source.path = local_path(loaded, source.path)
    if cfg.data.cache_dir is not None:
        cfg.data.cache_dir = str(loaded.resolve_path(cfg.data.cache_dir).absolute())
    if model.base != "embedded":
        model.base = local_path(loaded, model.base)
    if model.chat_template.endswith(".jinja"):
        model.chat_template = local_path(loaded, model.chat_template)
    method_of(cfg.method).resolve_paths(cfg, lambda value: local_path(loaded, value))
    if model.adapter is not None:
        start_from_adapter(cfg, loaded, notes)
    method_defaults(cfg, loaded, notes)
    eager_batches(cfg, loaded, notes)
    return Resolved(config=cfg, device=device, notes=notes)


def local_path(loaded: LoadedConfig, value: str) -> str:
    """``value`` as an absolute path when it names a local file or folder (or starts with ``~``), else unchanged
    (a model or dataset hub name)."""
    path = loaded.resolve_path(value)
    if value.startswith("~") or path.exists():
        return str(path.resolve())
    return value


def start_from_adapter(cfg: RunConfig, loaded: LoadedConfig, notes: list[str]) -> None:
    """``model.adapter``: check the run it names (finished, same base) and take its LoRA settings."""
    import yaml

    run_dir = loaded.resolve_path(cfg.model.adapter).resolve()
    cfg.model.adapter = str(run_dir)
    fix = "point model.adapter at a run directory `lora-ft train` finished (it holds adapter/ and manifest.json)"
    missing = [name for name in ("config.yaml", "manifest.json", "adapter/adapter_config.json",
                                 "adapter/adapter_model.safetensors") if not (run_dir / name).is_file()]
    if missing:
        raise UserError(f"model.adapter {run_dir} is not a finished lora-ft run ({', '.join(missing)} missing)",
                        fix=fix)
    check_adapter_files(run_dir / "adapter", named_by="model.adapter")  # the check every run command makes
    try:
        source = RunConfig.model_validate(yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8")))
    except Exception as exc:  # noqa: BLE001 - a config another lora-ft version wrote, or a damaged file
        raise UserError(f"cannot read the config of the run model.adapter names ({run_dir / 'config.yaml'}: "
                        f"{str(exc).splitlines()[0]})", fix=fix) from None
    if source.model.base != cfg.model.base:
        raise UserError(f"model.adapter was trained on {source.model.base}, but this config's model.base is "
                        f"{cfg.model.base}", fix=f"set model.base: {source.model.base}, or start a new adapter")
    chosen = loaded.config.lora.model_fields_set
    differ = [f"lora.{key} ({getattr(cfg.lora, key)!r} here, {getattr(source.lora, key)!r} in the adapter)"
              for key in sorted(chosen) if getattr(cfg.lora, key) != getattr(source.lora, key)]
    if differ:
        raise UserError(f"the adapter model.adapter starts from has other LoRA settings: {'; '.join(differ)}",
                        fix="remove these keys from the lora section (the adapter's are used), or start a new "
                        "adapter")
    cfg.lora = source.lora.model_copy(deep=True)
    notes.append(f"starting from the adapter of {run_dir} (trained further; its LoRA settings: r {cfg.lora.r}, "
                 f"alpha {cfg.lora.alpha:g})")


def method_defaults(cfg: RunConfig, loaded: LoadedConfig, notes: list[str]) -> None:
    """The method's own defaults: its learning rate unless one is set, padded batches where it needs them, and
    what it says of its settings."""
    method = method_of(cfg.method)
    rate_given = "learning_rate" in loaded.config.train.model_fields_set
    if method.learning_rate is not None and not rate_given:
        cfg.train.learning_rate = method.learning_rate
    notes += method.notes(cfg, rate_given)
    if not method.padding_free:
        cfg.train.padding_free = False  # TRL's trainers of pairs and labelled answers have no padding-free path


def eager_batches(cfg: RunConfig, loaded: LoadedConfig, notes: list[str]) -> None:
    """Padded batches under eager attention unless padding-free ones are asked for. A padding-free micro-batch is
    one row of all its samples: eager attention (as transformers runs it, with a block-diagonal mask) scores every
    token of the row against every other, about batch_size times the attention memory and time of padded rows.
    The loss is the same either way (tests/test_attention_choice.py)."""
    if cfg.model.attn_implementation != "eager":
        return
    if cfg.train.padding_free and "padding_free" not in loaded.config.train.model_fields_set:
        cfg.train.padding_free = False
        notes.append("padded batches under eager attention (a padding-free row would be scored whole, every token "
                     "against every other); train.padding_free: true keeps padding-free batches, with the same loss")
    if cfg.train.packing:
        notes.append("train.packing under eager attention: each micro-batch is scored as one row of batch_size x "
                     "data.max_seq_length tokens, every token against every other (correct, but memory and time "
                     "grow with the square of that length)")
