"""Every field of the Plan is executed by the runtime, or marked informational in compiler.plan."""

from __future__ import annotations

import re
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

from compiler.plan import INFORMATIONAL, PLAN_VERSION, Plan

ENGINE = Path(__file__).resolve().parents[2] / "engine"
WHOLE = {"spec", "architecture"}  # read throughout the runtime as values of their own schemas


def _model_of(annotation) -> type[BaseModel] | None:
    for arg in (annotation, *typing.get_args(annotation), *[a for t in typing.get_args(annotation) for a in typing.get_args(t)]):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return None


def _fields(model: type[BaseModel], prefix: str = "") -> list[str]:
    out = []
    for name, info in model.model_fields.items():
        path = prefix + name
        sub = _model_of(info.annotation)
        if sub is not None and name not in WHOLE and path not in INFORMATIONAL:
            out.extend(_fields(sub, path + "."))
        else:
            out.append(path)
    return out


def test_every_plan_field_is_read_by_the_runtime_or_informational():
    source = "\n".join(p.read_text() for p in ENGINE.rglob("*.py"))
    unread = [f for f in _fields(Plan) if f not in INFORMATIONAL
              and not re.search(r"\." + re.escape(f.split(".")[-1]) + r"\b", source)]
    assert unread == [], f"Plan fields neither read under engine/ nor in compiler.plan.INFORMATIONAL: {unread}"
    assert INFORMATIONAL <= set(_fields(Plan)) | {f.rsplit(".", 1)[0] for f in _fields(Plan)} | {"estimates"}


def test_a_plan_of_another_version_is_refused():
    from compiler import compile_spec

    text = compile_spec(str(ENGINE.parent / "specs" / "quickstart.yaml")).to_json()
    assert Plan.from_json(text).version == PLAN_VERSION
    with pytest.raises(ValueError, match="plan version 1 is not the version this engine reads"):
        Plan.from_json(text.replace(f'"version": {PLAN_VERSION}', '"version": 1'))
