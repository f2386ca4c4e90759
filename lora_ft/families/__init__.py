"""Model families: what lora-ft knows about one architecture, each family one module in this folder that defines
``FAMILY`` (a :class:`ModelFamily`).

A family says how to read its ``config.json`` (dimensions, layer count, context length: for ``plan`` and the
config checks) and, when it can be exported to GGUF, how its tensors and hyperparameters map to llama.cpp's.
Adding a family is adding a file here; nothing else changes. Families are plain Python (no torch, no gguf at
import), so the config checks can use them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache

from lora_ft.plugins import discover


@dataclass
class ModelShape:
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    tied: bool
    max_positions: int
    linear: dict[str, tuple[int, int]] = field(default_factory=dict)  # per layer: name -> (in, out)

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def linear_params(self) -> int:
        return self.layers * sum(i * o for i, o in self.linear.values())

    @property
    def embedding_params(self) -> int:
        return self.vocab * self.hidden * (1 if self.tied else 2)

    @property
    def total_params(self) -> int:
        return self.linear_params + self.embedding_params + self.layers * 2 * self.hidden + self.hidden


@dataclass(frozen=True)
class GgufRules:
    """How a family's Hugging Face checkpoint becomes a llama.cpp GGUF file."""

    arch: str  # llama.cpp's architecture name (gguf.MODEL_ARCH)
    tied_by_default: bool  # whether the output head shares the embedding when config.json does not say
    # (gguf tensor name, Hugging Face tensor name, shape, config) -> (transform, shape after it); transforms are
    # "" (as is), "transpose", or "permute:<heads>" (rotary rows to llama.cpp's layout)
    transform: Callable[[str, str, tuple, dict], tuple[str, tuple]]
    add_hparams: Callable[[object, dict], None]  # (gguf.GGUFWriter, config) -> None
    # tensors llama.cpp needs that the checkpoint does not hold: (gguf name, values)
    extra_tensors: Callable[[dict], list[tuple[str, tuple[float, ...]]]] = lambda config: []


@dataclass(frozen=True)
class ModelFamily:
    name: str
    architectures: tuple[str, ...]  # config.json "architectures" that belong to it
    config_keys: tuple[str, ...]  # keys whose presence in config.json identifies it when "architectures" is absent
    shape: Callable[[dict], ModelShape]
    layers: Callable[[dict], int | None]
    context_length: Callable[[dict], int | None]
    gguf: GgufRules | None = None  # None: no GGUF export for this family


@cache
def registry() -> dict[str, ModelFamily]:
    return {family.name: family for family in discover(__name__, __path__, "FAMILY")}


def register(family: ModelFamily) -> None:
    """Add a family from outside this folder (a plugin, or a test)."""
    registry()[family.name] = family


def family_of(config: dict) -> ModelFamily | None:
    """The family a config.json belongs to: by its architectures, else by the keys it has."""
    names = config.get("architectures") or []
    for family in registry().values():
        if any(name in family.architectures for name in names):
            return family
    if names:
        return None
    return next((f for f in registry().values() if f.config_keys and all(k in config for k in f.config_keys)), None)


def decoder_family(config: dict) -> ModelFamily:
    """The family whose config reading applies: the config's own, else the Llama-style decoder (Mistral, Qwen2,
    Gemma and most current models name their dimensions the same way)."""
    family = family_of(config)
    if family is not None:
        return family
    return registry()["llama"]


def gguf_family(config: dict) -> ModelFamily | None:
    """The family that can write this model as GGUF, by config.json "architectures"; None when none can."""
    names = config.get("architectures") or []
    return next((f for f in registry().values() if f.gguf and any(n in f.architectures for n in names)), None)


def gguf_architectures() -> list[str]:
    return [name for f in registry().values() if f.gguf for name in f.architectures]
