"""Model families: what lora-ft knows about one architecture, each family one module in this folder that defines
``FAMILY`` (a :class:`ModelFamily`).

A family says how to read its ``config.json`` (dimensions, layer count, context length: for ``plan`` and the
config checks). GGUF export needs nothing here: llama.cpp's own converter knows the architectures it supports.
Adding a family is adding a file here; nothing else changes. Families are plain Python (no torch at import), so
the config checks can use them.
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
    head_size: int = 0  # config.json's head_dim where it says one (Gemma, Qwen3): not always hidden / heads

    @property
    def head_dim(self) -> int:
        return self.head_size or self.hidden // self.heads

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
class ModelFamily:
    name: str
    architectures: tuple[str, ...]  # config.json "architectures" that belong to it
    config_keys: tuple[str, ...]  # keys whose presence in config.json identifies it when "architectures" is absent
    shape: Callable[[dict], ModelShape]
    layers: Callable[[dict], int | None]
    context_length: Callable[[dict], int | None]


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
