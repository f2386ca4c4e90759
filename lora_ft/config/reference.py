"""The schema as a reference: its sections in order and a readable name for each field's type (docs/config.md)."""

from __future__ import annotations

import types
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel

from lora_ft.methods import sections
from lora_ft.config.schema import (DataSection, DatasetSource, DistributedSection, LoraSection, ModelSection,
                                   RunConfig, TrackingSection, TrainSection)

def schema_sections() -> list[tuple[str, type[BaseModel]]]:
    """The schema's sections in order, for the generated reference."""
    return [
        ("(top level)", RunConfig),
        ("model", ModelSection),
        ("lora", LoraSection),
        ("data", DataSection),
        ("data.train[] and data.eval[]", DatasetSource),
        ("train", TrainSection),
        ("tracking", TrackingSection),
        ("distributed", DistributedSection),
        # each training method's own section, by the method's name, and the sections listed inside it
        *(entry for name, section in sections().items() for entry in [(name, section), *_listed(name, section)]),
    ]


def _listed(prefix: str, model: type[BaseModel]) -> list[tuple[str, type[BaseModel]]]:
    """The sections a section holds lists of (``grpo.rewards[]``), for their own tables."""
    found = []
    for name, field in model.model_fields.items():
        if get_origin(field.annotation) is list:
            (item,) = get_args(field.annotation)
            if isinstance(item, type) and issubclass(item, BaseModel):
                found.append((f"{prefix}.{name}[]", item))
    return found


def type_name(annotation: Any) -> str:
    """A short human name for a field's type, for the reference."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return type_name(get_args(annotation)[0])
    if origin is Literal:
        return " | ".join(f"`{a}`" for a in get_args(annotation))
    if origin in (Union, types.UnionType):
        return " or ".join(type_name(a) for a in get_args(annotation) if a is not type(None)) + (
            " or null" if type(None) in get_args(annotation) else ""
        )
    if origin is list:
        return f"list of {type_name(get_args(annotation)[0])}"
    if origin is dict:
        return "mapping"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "section"
    return getattr(annotation, "__name__", str(annotation))
