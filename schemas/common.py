"""Shared building blocks of the spec models: strict base model and the `auto` type."""

from __future__ import annotations

from typing import Literal, Union

from pydantic import BaseModel, ConfigDict

AUTO = "auto"

#: An integer chosen by the user, or ``"auto"``: the compiler picks it.
IntOrAuto = Union[int, Literal["auto"]]


class Section(BaseModel):
    """Base of every spec section: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, use_enum_values=True, allow_inf_nan=False)
