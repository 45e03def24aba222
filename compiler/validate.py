"""Validate a loaded spec: schema first (every pydantic error), then semantic checks.

Every problem is reported at once, each with its dotted field path, the YAML file and line that set
it, and a hint. Semantic checks run only when the schema passed (they need a typed spec):

* the model can be resolved (inline architecture, local config.json, or catalog name);
* prompt + response (and evaluation prompt + response) fit the model's context window;
* stop strings shaped like special tokens exist in the model's tokenizer;
* ``init: random`` / ``init: pretrained`` have what they need;
* a custom prompt template has ``{input}`` and formats;
* data files exist (only when ``check_files``: ``engine run``; ``engine plan`` works without data);
* placement-independent parallelism and batch rules from `compiler.rules.check_spec`.
"""

from __future__ import annotations

import difflib
import typing
from pathlib import Path
from typing import Any, Literal, Optional, Sequence, Union

from pydantic import BaseModel, ValidationError

from compiler.errors import Problem, SpecError
from compiler.load import LoadedSpec, _flatten_annotation, section_model
from compiler.resolve import end_tokens, looks_special, resolve_architecture, tokenizer_special_tokens
from compiler.rules import check_spec
from schemas import Architecture, ExperimentSpec

# ---------------------------------------------------------------------------------------------
# Schema walking


def _field_at(parts: Sequence[Union[str, int]]) -> tuple[Optional[Any], Optional[type[BaseModel]]]:
    """(annotation of the field at ``parts``, model that owns it); (None, None) when not a field."""
    annotation: Any = ExperimentSpec
    owner: Optional[type[BaseModel]] = None
    for part in parts:
        model = section_model(annotation)
        seqs = [t for t in _flatten_annotation(annotation) if typing.get_origin(t) in (list, tuple)]
        if model is not None and isinstance(part, str) and part in model.model_fields:
            owner = model
            annotation = owner.model_fields[part].annotation
        elif seqs and isinstance(part, int):
            args = [a for a in typing.get_args(seqs[0]) if a is not Ellipsis]
            annotation = args[min(part, len(args) - 1)] if typing.get_origin(seqs[0]) is tuple and args else (args[0] if args else Any)
        else:
            return None, None
    return annotation, owner


_BOUNDS = (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<="))


def _bounds(metadata: Sequence[Any], out: dict[str, Any]) -> None:
    for item in metadata:
        for attr, _ in _BOUNDS:
            if getattr(item, attr, None) is not None:
                out.setdefault(attr, getattr(item, attr))


def allowed_range(parts: Sequence[Union[str, int]], errs: Sequence[dict] = ()) -> str:
    """The numeric range a field allows, e.g. ``> 0`` or ``0 <= value <= 1`` ('' when unbounded): from
    the field's constraints (``Field(gt=...)``, ``PositiveInt``) and the errors' own limits."""
    found: dict[str, Any] = {}
    for e in errs:
        for attr, _ in _BOUNDS:
            if attr in e.get("ctx", {}):
                found.setdefault(attr, e["ctx"][attr])
    annotation, owner = _field_at(parts)
    if owner is not None and parts and str(parts[-1]) in owner.model_fields:
        _bounds(owner.model_fields[str(parts[-1])].metadata, found)
    for m in _flatten_annotation(annotation) if annotation is not None else []:
        if typing.get_origin(m) is typing.Annotated:
            _bounds(typing.get_args(m)[1:], found)
    num = lambda v: f"{v:g}" if isinstance(v, float) else str(v)  # noqa: E731
    low = next(((sym, num(found[a])) for a, sym in _BOUNDS[:2] if a in found), None)
    high = next(((sym, num(found[a])) for a, sym in _BOUNDS[2:] if a in found), None)
    if low and high:
        return f"{low[1]} {'<' if low[0] == '>' else '<='} value {high[0]} {high[1]}"
    if low or high:
        sym, v = low or high
        return f"{sym} {v}"
    return ""


def _model_at(parts: Sequence[Union[str, int]]) -> Optional[type[BaseModel]]:
    """The section model at ``parts`` (e.g. ``("trainer",)`` -> TrainerSpec)."""
    annotation, _ = _field_at(parts) if parts else (ExperimentSpec, None)
    return section_model(annotation)


def describe_type(annotation: Any) -> str:
    """Readable name of a field type, for hints and the reference table."""
    members = [m for m in _flatten_annotation(annotation) if m is not type(None)]
    optional = len(members) < len(_flatten_annotation(annotation))
    parts: list[str] = []
    for m in members:
        origin = typing.get_origin(m)
        if origin is typing.Annotated:  # a constrained type (PositiveInt ...): its base type
            parts.append(describe_type(typing.get_args(m)[0]))
        elif origin is Literal:
            parts.append(" | ".join(repr(a) if isinstance(a, str) else str(a) for a in typing.get_args(m)))
        elif origin is list:
            args = typing.get_args(m)
            parts.append(f"list of {describe_type(args[0])}" if args else "list")
        elif origin is tuple:
            args = typing.get_args(m)
            parts.append(f"[{', '.join(describe_type(a) for a in args)}]")
        elif isinstance(m, type) and issubclass(m, BaseModel):
            parts.append("mapping")
        elif m is bool:
            parts.append("bool")
        elif m is int:
            parts.append("int")
        elif m is float:
            parts.append("float")
        elif m is str:
            parts.append("string")
        else:
            parts.append(getattr(m, "__name__", str(m)))
    text = " | ".join(parts)
    return f"{text} | null" if optional else text


# ---------------------------------------------------------------------------------------------
# Pydantic errors -> Problems


def _collapse_loc(loc: Sequence[Union[str, int]], data: Any, error_type: str) -> list[Union[str, int]]:
    """Drop pydantic's union-member tags (``int``, ``literal['auto']``) from an error location."""
    out: list[Union[str, int]] = []
    current = data
    for i, part in enumerate(loc):
        last = i == len(loc) - 1
        if isinstance(current, dict) and isinstance(part, str) and part in current:
            out.append(part)
            current = current[part]
        elif isinstance(current, (list, tuple)) and isinstance(part, int) and 0 <= part < len(current):
            out.append(part)
            current = current[part]
        elif last and error_type == "missing" and isinstance(part, str):
            out.append(part)
        # else: a union tag such as 'int' or "literal['auto']": not part of the user's path
    return out


def _dotted(parts: Sequence[Union[str, int]]) -> str:
    return ".".join(str(p) for p in parts) or "<spec>"


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _literal_values(annotation: Any) -> list[Any]:
    values: list[Any] = []
    for m in _flatten_annotation(annotation):
        if typing.get_origin(m) is Literal:
            values.extend(typing.get_args(m))
        elif typing.get_origin(m) is list:
            args = typing.get_args(m)
            if args:
                values.extend(_literal_values(args[0]))
    return values


def _schema_problems(errors: list[dict], loaded: LoadedSpec) -> list[Problem]:
    grouped: dict[str, list[dict]] = {}
    paths: dict[str, list[Union[str, int]]] = {}
    for err in errors:
        parts = _collapse_loc(err["loc"], loaded.data, err["type"])
        key = _dotted(parts)
        grouped.setdefault(key, []).append(err)
        paths[key] = parts
    problems = []
    for key, errs in grouped.items():
        problems.append(_one_problem(key, paths[key], errs, loaded))
    order = {name: i for i, name in enumerate(loaded.sources)}
    return sorted(problems, key=lambda p: (order.get(p.file or "", len(order)), p.line or 0))


def _one_problem(path: str, parts: list[Union[str, int]], errs: list[dict], loaded: LoadedSpec) -> Problem:
    first = errs[0]
    kind = first["type"]
    annotation, owner = _field_at(parts)
    if kind == "extra_forbidden":
        parent = _model_at(parts[:-1])
        choices = list(parent.model_fields) if parent else []
        name = str(parts[-1]) if parts else path
        close = difflib.get_close_matches(name, choices, n=1, cutoff=0.5)
        section = _dotted(parts[:-1]) if parts[:-1] else "the spec"
        hint = f"did you mean '{close[0]}'?" if close else f"fields of {section}: {', '.join(choices)}"
        return loaded.problem(path, f"unknown field '{name}'", hint)
    if kind == "missing":
        desc = owner.model_fields[str(parts[-1])].description if owner and parts and str(parts[-1]) in owner.model_fields else None
        hint = f"add {path}: <{describe_type(annotation)}>" + (f" ({desc})" if desc else "")
        problem = loaded.problem(path, "required field is missing", hint)
        return problem if problem.line else problem.located(problem.file, 1)
    value = first.get("input")
    literal = [e for e in errs if e["type"] == "literal_error"]
    if literal and len(literal) == len(errs):
        allowed = _literal_values(annotation) or [first.get("ctx", {}).get("expected")]
        close = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1, cutoff=0.6)
        hint = f"allowed values: {', '.join(str(a) for a in allowed)}" + (f" (did you mean '{close[0]}'?)" if close else "")
        return loaded.problem(path, f"{_short(value)} is not an allowed value", hint)
    constraint = {"greater_than", "greater_than_equal", "less_than", "less_than_equal", "too_short", "too_long"}
    if kind in constraint:
        bounds = allowed_range(parts, errs) if kind not in ("too_short", "too_long") else ""
        what = describe_type(annotation) if annotation is not None else ""
        hint = (f"allowed range: {bounds}" + (f" ({what})" if what else "")) if bounds else (f"expected {what}" if what else "")
        return loaded.problem(path, f"{_short(value)}: {first['msg'][0].lower()}{first['msg'][1:]}", hint)
    expected = describe_type(annotation) if annotation is not None else ""
    if kind == "finite_number":  # nan / inf: nothing could train with it
        return loaded.problem(path, f"{_short(value)} is not a finite number",
                              f"expected a finite {expected or 'number'} (not nan or inf)")
    if len(errs) > 1 or kind.endswith(("_type", "_parsing")) or kind == "model_type":
        return loaded.problem(path, f"{_short(value)} has the wrong type",
                              f"expected {expected}" if expected else first["msg"])
    return loaded.problem(path, f"{first['msg']} (got {_short(value)})", f"expected {expected}" if expected else "")


# ---------------------------------------------------------------------------------------------
# Semantic checks


def _is_local_file(path: str) -> bool:
    return path not in ("synthetic", "") and "://" not in path


def missing_data_files(spec: ExperimentSpec, *, evaluation_only: bool = False) -> list[tuple[str, str, str]]:
    """(field, path, hint) of each local data file that does not exist: data.train, data.val, and
    ``<evaluation.data_dir>/<benchmark>.jsonl`` for each benchmark when evaluation is on.

    evaluation_only: what `engine eval` reads (data.val and every listed benchmark, whatever
    ``evaluation.every`` says; data.train is not needed).
    """
    files = (("data.val", spec.data.val),) if evaluation_only else (("data.train", spec.data.train), ("data.val", spec.data.val))
    out = [(key, value, f"prepare it, or override {key}=<path> (or {key}=synthetic"
            + (", or skip it with data.val=null)" if key == "data.val" else ")"))
           for key, value in files if value and _is_local_file(value) and not Path(value).exists()]
    ev = spec.evaluation
    missing = ([name for name in ev.benchmarks if not (Path(ev.data_dir) / f"{name}.jsonl").exists()]
               if ev.every or evaluation_only else [])
    if missing:
        where = ev.data_dir if Path(ev.data_dir).is_dir() else f"{ev.data_dir} (no such folder)"
        out.append(("evaluation.benchmarks", f"{', '.join(f'{n}.jsonl' for n in missing)} in {where}",
                    "put the files in evaluation.data_dir, override evaluation.data_dir=<folder>, "
                    "or skip them with evaluation.benchmarks=[]"))
    return out


def _check_lengths(spec: ExperimentSpec, arch: Architecture, loaded: LoadedSpec) -> list[Problem]:
    problems = []
    limit = arch.max_position_embeddings
    prompt, response = spec.data.max_prompt_length, spec.data.max_response_length
    if prompt + response > limit:
        problems.append(loaded.problem(
            "data.max_response_length",
            f"max_prompt_length {prompt} + max_response_length {response} = {prompt + response} tokens "
            f"exceeds {spec.model.name}'s context window of {limit} tokens (max_position_embeddings)",
            f"max_response_length <= {limit - prompt}" if limit > prompt else f"max_prompt_length < {limit}"))
    ev = spec.evaluation
    if ev.every > 0 and prompt + ev.max_response_length > limit:
        problems.append(loaded.problem(
            "evaluation.max_response_length",
            f"max_prompt_length {prompt} + evaluation.max_response_length {ev.max_response_length} = "
            f"{prompt + ev.max_response_length} tokens exceeds {spec.model.name}'s context window of {limit} tokens",
            f"evaluation.max_response_length <= {limit - prompt}, e.g. ${{data.max_response_length}}"))
    return problems


def _check_stops(spec: ExperimentSpec, loaded: LoadedSpec) -> list[Problem]:
    tokens = tokenizer_special_tokens(spec.model)
    if tokens is None:
        return []
    problems = []
    ends = end_tokens(spec.model)
    for section, stops in (("model", spec.model.stop), ("rollout", spec.rollout.stop)):
        for i, stop in enumerate(stops):
            if stop == "":
                problems.append(loaded.problem(f"{section}.stop.{i}", "empty stop string", "remove it"))
            elif looks_special(stop) and stop not in tokens:
                known = ", ".join(ends) if ends else ", ".join(sorted(t for t in tokens if looks_special(t))[:8])
                problems.append(loaded.problem(
                    f"{section}.stop.{i}",
                    f"stop string {stop!r} looks like a special token but {spec.model.name}'s tokenizer has no such token",
                    f"this tokenizer's end tokens: {known} (always applied); remove it or use a token it has"))
    return problems


def _check_model(spec: ExperimentSpec, loaded: LoadedSpec) -> tuple[Optional[Architecture], list[Problem]]:
    try:
        arch = resolve_architecture(spec.model)
    except SpecError as exc:
        problems = [loaded.problem(p.path, p.message, p.hint) for p in exc.problems]
        if spec.model.init == "random":
            problems = [loaded.problem("model.init", "init: random needs an architecture to build",
                                       "give model.architecture inline or a catalog model.name"), *problems]
        return None, problems
    problems = []
    m = spec.model
    if m.init == "pretrained" and m.architecture is not None and not m.path:
        problems.append(loaded.problem("model.init", "init: pretrained needs weights, but only an inline architecture is given",
                                       "set model.path to a HF model folder, or init: random"))
    if m.pretrain_steps > 0 and m.init != "random":
        problems.append(loaded.problem("model.pretrain_steps", "pretrain_steps applies only to init: random models",
                                       "remove pretrain_steps, or set model.init: random"))
    if m.tokenizer not in (None, "builtin") and Path(m.tokenizer).suffix in (".json",):
        problems.append(loaded.problem("model.tokenizer", "model.tokenizer is a folder, not a file",
                                       f"use {str(Path(m.tokenizer).parent)!r}"))
    return arch, problems


def _check_data(spec: ExperimentSpec, loaded: LoadedSpec, check_files: bool) -> list[Problem]:
    d = spec.data
    problems = []
    if d.prompt_template == "custom":
        if not d.custom_template:
            problems.append(loaded.problem("data.custom_template", "prompt_template: custom needs custom_template",
                                           "custom_template: \"Question: {input}\\nAnswer:\"", at="data.prompt_template"))
        elif "{input}" not in d.custom_template:
            problems.append(loaded.problem("data.custom_template", "custom_template has no '{input}' placeholder",
                                           "put {input} where the question goes"))
    if d.min_pass_rate is not None and d.max_pass_rate is not None and d.min_pass_rate > d.max_pass_rate:
        problems.append(loaded.problem("data.min_pass_rate", f"min_pass_rate {d.min_pass_rate} > max_pass_rate {d.max_pass_rate}",
                                       "min_pass_rate <= max_pass_rate"))
    if check_files:
        for key, value, hint in missing_data_files(spec):
            problems.append(loaded.problem(key, f"data file not found: {value}", hint))
    problems += [loaded.problem(field, message, hint, at=key) for field, message, hint, key in data_column_problems(spec)]
    return problems


def data_column_problems(spec: ExperimentSpec) -> list[tuple[str, str, str, str]]:
    """(field, message, hint, file field) for each local data.train / data.val file whose first rows lack the
    columns ``data.prompt_key`` / ``data.answer_key`` name (reads only those rows, no torch)."""
    from compiler.columns import column_problems

    d = spec.data
    out = []
    for key, value in (("data.train", d.train), ("data.val", d.val)):
        if value and _is_local_file(value) and Path(value).is_file():
            for field, message, hint in column_problems(value, d.prompt_key, d.answer_key):
                out.append((f"data.{field}" if field != "file" else key, f"{key}: {message}", hint, key))
    return out


def _check_rules(spec: ExperimentSpec, arch: Architecture, loaded: LoadedSpec) -> list[Problem]:
    return [p if p.file else p.located(*loaded.locate(p.path)) for p in check_spec(spec, arch)]


def spec_warnings(spec: ExperimentSpec, loaded: Optional[LoadedSpec] = None) -> list[Problem]:
    """Things that are allowed but probably not meant (printed by `engine plan`, never fatal)."""
    def at(path: str, message: str, hint: str = "") -> Problem:
        return loaded.problem(path, message, hint) if loaded else Problem(path, message, hint)

    out = []
    for key, value, hint in missing_data_files(spec):
        out.append(at(key, f"not found: {value} (engine plan does not need it; engine run does)", hint))
    if spec.data.custom_template is not None and spec.data.prompt_template != "custom":
        out.append(at("data.custom_template", f"custom_template is ignored: prompt_template is {spec.data.prompt_template!r}",
                      "set data.prompt_template: custom, or remove custom_template"))
    if spec.rollout.n == 1 and spec.algorithm.advantage in ("grpo", "dr_grpo"):
        out.append(at("rollout.n", f"rollout.n 1 with advantage {spec.algorithm.advantage}: every group "
                      "advantage is 0, only the KL and entropy terms move the policy", "n >= 2 for group baselines"))
    return out


def validate(loaded: LoadedSpec, *, check_files: bool = False) -> tuple[ExperimentSpec, Architecture]:
    """Typed spec and resolved architecture of ``loaded``; raises `SpecError` listing every problem.

    ``check_files``: also require local data files to exist (``engine run``; not ``engine plan``).
    """
    try:
        spec = ExperimentSpec.model_validate(loaded.data)
    except ValidationError as exc:
        raise SpecError([*loaded.problems, *_schema_problems(exc.errors(), loaded)]) from None
    arch, problems = _check_model(spec, loaded)
    problems = [*loaded.problems, *problems]
    problems += _check_data(spec, loaded, check_files)
    problems += _check_stops(spec, loaded)
    if arch is not None:
        problems += _check_lengths(spec, arch, loaded)
        problems += _check_rules(spec, arch, loaded)
    if problems:
        raise SpecError(_dedupe(problems))
    assert arch is not None
    return spec, arch


def _dedupe(problems: list[Problem]) -> list[Problem]:
    seen: set[tuple[str, str]] = set()
    out = []
    for p in problems:
        if (p.path, p.message) not in seen:
            seen.add((p.path, p.message))
            out.append(p)
    return out
