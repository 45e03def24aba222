"""The spec reference as Markdown tables, generated from the pydantic schema (`engine schema --markdown`)."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from compiler.load import _flatten_annotation, section_model
from compiler.validate import describe_type
from schemas import ExperimentSpec


def _default(field: Any) -> str:
    if field.default_factory is not None:
        value = field.default_factory()
    elif field.default is PydanticUndefined:
        return "**required**"
    else:
        value = field.default
    if isinstance(value, BaseModel):
        return "(section)"
    if isinstance(value, tuple):
        value = list(value)
    text = json.dumps(value, ensure_ascii=False)
    return f"`{text}`" if len(text) <= 40 else f"`{text[:37]}...`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _table(model: type[BaseModel], prefix: str, out: list[str], nested: list[tuple[str, type[BaseModel]]]) -> None:
    title = f"`{prefix}`" if prefix else "top level"
    doc = (model.__doc__ or "").strip().splitlines()[0] if model.__doc__ else ""
    out += [f"#### {title}", "", doc, "", "| key | type | default | description |", "|---|---|---|---|"]
    if not prefix:
        out.append("| `extends` | string \\| list of string | - | Parent spec file(s), relative to this file; this file's keys win. |")
    for name, field in model.model_fields.items():
        sub = section_model(field.annotation)
        key = f"{prefix}.{name}" if prefix else name
        kind = describe_type(field.annotation)
        desc = field.description or ""
        if sub is not None:
            nested.append((key, sub))
            optional = type(None) in _flatten_annotation(field.annotation)
            kind = f"section `{key}`" + (" \\| null" if optional else "")
            desc = desc or (sub.__doc__ or "").strip().splitlines()[0]
        out.append(f"| `{name}` | {_cell(kind) if sub is None else kind} | {_cell(_default(field))} | {_cell(desc)} |")
    out.append("")


def schema_reference_markdown() -> str:
    """Markdown tables of every spec section: key, type, default, description."""
    out: list[str] = []
    queue: list[tuple[str, type[BaseModel]]] = [("", ExperimentSpec)]
    while queue:
        prefix, model = queue.pop(0)
        found: list[tuple[str, type[BaseModel]]] = []
        _table(model, prefix, out, found)
        queue.extend(found)
    return "\n".join(out)
