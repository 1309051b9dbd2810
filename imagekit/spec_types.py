"""The spec's value types: versions, numbers that refuse booleans and infinities, and the frozen model base."""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field


def _version(value: Any) -> Any:
    # YAML reads `python: 3.10` as the float 3.1; refuse floats instead of silently building the wrong thing.
    if isinstance(value, bool):
        raise ValueError("expected a version string")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        raise ValueError(f'write versions as quoted strings such as "3.10": YAML read this one as the number {value}')
    return value


# versions reach package names, URLs and shell lines unquoted in places: letters, digits and . + _ - only
Version = Annotated[
    str,
    BeforeValidator(_version),
    Field(
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9.+_-]*$",
        description='a quoted version string, e.g. "3.11" (YAML reads 3.10 as 3.1)',
    ),
]


def _not_bool(value: Any) -> Any:
    # pydantic reads true as 1 in lax mode: `port: true` would become EXPOSE 1
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got {str(value).lower()}")
    return value


def _spec_version(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError(f"the spec version is the number 1, got {str(value).lower()}")
    return value


def _finite(value: Any) -> Any:
    # `.inf` and `.nan` are valid YAML floats but no usable timeout, size or tolerance
    value = _not_bool(value)
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"expected a finite number, got {value}")
    return value


Int = Annotated[int, BeforeValidator(_not_bool)]
Num = Annotated[float, BeforeValidator(_finite)]
SpecVersion = Annotated[Literal[1], BeforeValidator(_spec_version)]


class SpecModel(BaseModel):
    """The base of every spec model: unknown keys refused, values frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=False, populate_by_name=True)
