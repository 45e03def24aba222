"""The Markdown spec reference (`engine schema --markdown`) covers every field, and the README copy is current."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import BaseModel

from compiler.reference import schema_reference_markdown
from schemas import ExperimentSpec

README = Path(__file__).resolve().parents[2] / "README.md"
START, END = "<!-- spec-reference:start -->", "<!-- spec-reference:end -->"


def _sections(model: type[BaseModel], prefix: str = ""):
    yield prefix, model
    for name, field in model.model_fields.items():
        for t in [field.annotation, *getattr(field.annotation, "__args__", ())]:
            if isinstance(t, type) and issubclass(t, BaseModel):
                yield from _sections(t, f"{prefix}.{name}" if prefix else name)


def test_reference_lists_every_field():
    text = schema_reference_markdown()
    for prefix, model in _sections(ExperimentSpec):
        heading = f"#### `{prefix}`" if prefix else "#### top level"
        assert heading in text
        block = text.split(heading, 1)[1].split("\n#### ", 1)[0]
        for name in model.model_fields:
            assert f"| `{name}` |" in block, f"{prefix}.{name}"


def test_readme_embeds_the_current_reference():
    assert START in README.read_text(encoding="utf-8"), f"README.md has no {START} ... {END} block"
    body = README.read_text(encoding="utf-8")
    embedded = re.search(re.escape(START) + r"\n(.*?)" + re.escape(END), body, re.S).group(1)
    assert embedded.strip() == schema_reference_markdown().strip(), \
        "README spec reference is stale: paste the output of `engine schema --markdown` between the markers"
