"""``model.attn_implementation``: the attention kernels the model's own class supports, asked of transformers
before any weight loads, and the choice of one.

The class is the one ``AutoModelForCausalLM`` loads for the model's config.json (its ``model_type``, else its
``architectures``); it is imported, never instantiated. ``auto`` picks FlashAttention-2 on a CUDA GPU in 16-bit
where flash-attn is importable and the class supports it, else PyTorch's SDPA where the class supports it, else
eager attention (Gemma 2: SDPA has no logit soft-capping). A choice written in the config that the class does not
support is refused here, naming the key, instead of as a transformers traceback after the data is prepared. Where
the class cannot be known (a hub model not downloaded yet, remote code, an architecture this transformers does
not know), ``auto`` is SDPA, transformers' own default, and says so.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

from lora_ft.config.loaded import LoadedConfig
from lora_ft.config.schema import EMBEDDED_MODEL

KEY = "model.attn_implementation"
NAMES = {"flash_attention_2": "FlashAttention-2", "sdpa": "sdpa", "eager": "eager"}


@dataclass(frozen=True)
class AttentionSupport:
    """What the model's transformers class supports; ``model_class`` is None where it could not be found (and
    ``unknown`` says why)."""

    model_class: str | None
    sdpa: bool = True
    flash: bool = True
    unknown: str = ""

    def supports(self, implementation: str) -> bool:
        return {"eager": True, "sdpa": self.sdpa, "flash_attention_2": self.flash}[implementation]


@dataclass(frozen=True)
class AttentionChoice:
    implementation: str  # flash_attention_2, sdpa or eager
    reason: str  # why, in words

    def describe(self) -> str:
        return f"attention: {self.implementation} ({self.reason})"


def model_config(loaded: LoadedConfig) -> dict | None:
    """The base model's config.json without loading anything: the embedded model's, a local folder's, or a hub
    model's already in the local hub cache (no network); None where there is none to read."""
    base = loaded.config.model.base
    if base == EMBEDDED_MODEL:
        from lora_ft.embedded import EMBEDDED_MODEL_SHAPE

        return dict(EMBEDDED_MODEL_SHAPE)
    folder = loaded.resolve_path(base)
    path: Path | str | None = folder / "config.json" if folder.is_dir() else None
    if path is None and not folder.exists():
        try:
            from huggingface_hub import try_to_load_from_cache

            path = try_to_load_from_cache(base, "config.json", revision=loaded.config.model.revision)
        except Exception:  # noqa: BLE001 - not a valid hub id, or a cache we cannot read: unknown
            path = None
    if not isinstance(path, (str, Path)) or not Path(path).is_file():
        return None
    try:
        config = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return config if isinstance(config, dict) else None


def class_support(config: dict | None, trust_remote_code: bool = False) -> AttentionSupport:
    """The attention implementations the class ``AutoModelForCausalLM`` would load for ``config`` supports, read from
    its class attributes (``_supports_sdpa``, ``_supports_flash_attn``; ``_supports_flash_attn_2`` on older
    remote-code classes)."""
    if config is None:
        return AttentionSupport(None, unknown="its config.json cannot be read before the model is downloaded")
    auto_map = config.get("auto_map") or {}
    if trust_remote_code and "AutoModelForCausalLM" in auto_map:
        return AttentionSupport(None, unknown=f"its class comes with the checkpoint as remote code "
                                f"({auto_map['AutoModelForCausalLM']})")
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    model_type = config.get("model_type")
    names = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(model_type) if isinstance(model_type, str) else None
    candidates = [names] if isinstance(names, str) else list(names or [])
    candidates += [name for name in config.get("architectures") or [] if isinstance(name, str)]
    for name in candidates:
        try:
            cls = getattr(transformers, name)
        except Exception:  # noqa: BLE001 - no such class here, or its optional dependency is missing
            continue
        flash = bool(getattr(cls, "_supports_flash_attn", False) or getattr(cls, "_supports_flash_attn_2", False))
        return AttentionSupport(cls.__name__, sdpa=bool(getattr(cls, "_supports_sdpa", False)), flash=flash)
    known = f"model_type {model_type!r}" if model_type else f"architectures {config.get('architectures')}"
    return AttentionSupport(None, unknown=f"transformers {transformers.__version__} has no causal-LM class for "
                            f"its {known}")


def flash_attn_installed() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


def choose(support: AttentionSupport, device: str, dtype: str) -> AttentionChoice:
    """``auto``: FlashAttention-2 where it can run and the class supports it, else SDPA where supported, else eager."""
    if support.model_class is None:
        return AttentionChoice("sdpa", f"the model's class is not known here: {support.unknown}; sdpa is "
                               f"transformers' default; if the model refuses it, set {KEY}: eager")
    cls = support.model_class
    flash_runs = device == "cuda" and dtype in ("bfloat16", "float16") and flash_attn_installed()
    if flash_runs and support.flash:
        return AttentionChoice("flash_attention_2", f"{cls} supports it; flash-attn is installed, on a CUDA GPU in "
                               f"{dtype}")
    if flash_runs:
        not_flash = f"; {cls} does not support FlashAttention-2"
    elif device == "cuda":
        not_flash = ("; FlashAttention-2 computes in 16-bit" if dtype not in ("bfloat16", "float16")
                     else "; flash-attn is not installed")
    else:
        not_flash = ""
    if support.sdpa:
        return AttentionChoice("sdpa", f"{cls} supports it{not_flash}")
    return AttentionChoice("eager", f"{cls} does not support sdpa{not_flash}")


def unsupported(support: AttentionSupport, implementation: str) -> tuple[str, str] | None:
    """(what, fix) when ``implementation``, set explicitly, is one the model's class does not support."""
    if support.model_class is None or support.supports(implementation):
        return None
    other = "sdpa" if implementation == "flash_attention_2" and support.sdpa else "eager"
    return (f"{KEY} is {implementation}, but {support.model_class} does not support {NAMES[implementation]}",
            f"set {KEY}: {other} (or auto, which picks one the model supports)")


def flash_problem(device: str | None, dtype: str | None) -> tuple[str, str] | None:
    """(what, fix) when FlashAttention-2, set explicitly, cannot run here: flash-attn missing, no CUDA GPU
    (``device``, where known), or 32-bit compute (``dtype``, where known)."""
    fix = f"set {KEY}: auto (which picks sdpa or eager here) or sdpa"
    if not flash_attn_installed():
        return f"{KEY} is flash_attention_2, but the flash-attn package is not installed", \
            f"pip install flash-attn on a CUDA machine, or {fix}"
    if device is not None and device != "cuda":
        return f"{KEY} is flash_attention_2, which needs a CUDA GPU; this run is on the {device}", fix
    if dtype == "float32":
        return f"{KEY} is flash_attention_2, which computes in 16-bit; model.dtype is float32", \
            f"set model.dtype: bfloat16 (or auto), or {fix}"
    return None


def resolve_attention(loaded: LoadedConfig, device: str, dtype: str) -> AttentionChoice:
    """The implementation a run on ``device`` in ``dtype`` uses: ``auto`` decided; an explicit one kept, and
    FlashAttention-2 refused where it cannot run (the class's support is checked with the config)."""
    from lora_ft.errors import UserError

    model = loaded.config.model
    if model.attn_implementation == "auto":
        return choose(class_support(model_config(loaded), model.trust_remote_code), device, dtype)
    if model.attn_implementation == "flash_attention_2" and (problem := flash_problem(device, dtype)):
        raise UserError(problem[0], fix=problem[1], settings=(KEY,))
    return AttentionChoice(model.attn_implementation, f"as {KEY} sets")


def choice_on_this_machine(loaded: LoadedConfig) -> AttentionChoice:
    """What a run of this config would use here, for ``lora-ft validate`` (which decides nothing else)."""
    import torch

    model, device_key = loaded.config.model, loaded.config.train.device
    device = "cuda" if device_key == "cuda" or (device_key == "auto" and torch.cuda.is_available()) else "cpu"
    dtype = model.dtype if model.dtype != "auto" else ("bfloat16" if device == "cuda" else "float32")
    if model.attn_implementation == "flash_attention_2":
        return AttentionChoice("flash_attention_2", f"as {KEY} sets; it needs a CUDA GPU and 16-bit compute")
    return resolve_attention(loaded, device, dtype)
