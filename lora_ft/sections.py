"""The base of every config section: strict (unknown keys rejected), defaults validated, and YAML's true/false
never taken for a number."""

from __future__ import annotations

from typing import Any, get_args

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError


def _accepts(annotation: Any, kinds: tuple[type, ...]) -> bool:
    """Whether a field's type admits any of ``kinds`` (looking through unions, Annotated and Optional)."""
    if annotation in kinds:
        return True
    return any(_accepts(arg, kinds) for arg in get_args(annotation) if not isinstance(arg, (str, int, float)))


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        # YAML's true/false would otherwise pass as 1/0 (max_steps: true trained one step)
        if isinstance(value, bool) and info.field_name in cls.model_fields:
            annotation = cls.model_fields[info.field_name].annotation
            if _accepts(annotation, (int, float)) and not _accepts(annotation, (bool,)):
                raise PydanticCustomError("number_not_bool", "a number is expected, not {value}",
                                          {"value": str(value).lower()})
        return value
