"""Load a YAML experiment spec: inheritance (`extends:`), interpolation, command-line overrides.

Every leaf key is tracked back to the YAML file and line that set it, so that later problems can be
reported as ``specs/qwen2.5-7b.yaml:12: data.max_response_length: ...``.

Rules:

* ``extends: base/simplerl-zoo.yaml`` (a string, or a list of strings merged left to right) names a
  parent spec, relative to the file that contains the key. Chains are allowed; cycles are an error.
  The child's keys win; mappings merge key by key; lists and scalars replace.
* ``${data.max_response_length}`` interpolations (OmegaConf) are resolved after the whole chain and the
  overrides are merged, so a child or an override changes every value that refers to it.
* Overrides are OmegaConf dotlist entries ``key=value`` (value parsed as YAML). The key must name a
  field of the spec schema; an unknown key is an error naming the override.
* ``???`` marks a value every child spec must set (OmegaConf's mandatory value).

The loader knows nothing about placement: it imports only PyYAML, OmegaConf and the schema package.
"""

from __future__ import annotations

import difflib
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from compiler.errors import Problem, SpecError

if typing.TYPE_CHECKING:
    from pydantic import BaseModel

#: The key a spec uses to name its parent spec(s).
EXTENDS_KEY = "extends"

Location = tuple[Optional[str], Optional[int]]


@dataclass
class LoadedSpec:
    """A merged, interpolated spec plus where each of its keys came from.

    data: the fully merged and resolved spec as plain dicts/lists (``extends`` removed).
    sources: the YAML files that built it, the file you named first, then its parents.
    overrides: the ``key=value`` overrides applied last.
    """

    data: dict
    sources: list[str]
    overrides: list[str] = field(default_factory=list)
    locations: dict[str, tuple[str, int]] = field(default_factory=dict, repr=False)
    #: Problems found while loading that did not stop it (unknown overrides, with ``defer=True``).
    problems: list[Problem] = field(default_factory=list)

    def locate(self, path: str) -> Location:
        """(file, line) that set dotted ``path``; falls back to the nearest parent key that is known.

        An override is located as ``("<override key=value>", None)``; a key set nowhere (a schema
        default, or a missing required key) falls back to its parent section, then to the root file.
        """
        parts = [p for p in str(path).split(".") if p != ""]
        while parts:
            hit = self.locations.get(".".join(parts))
            if hit is not None:
                return hit
            parts.pop()
        return (self.sources[0] if self.sources else None, None)

    def problem(self, path: str, message: str, hint: str = "", *, at: Optional[str] = None) -> Problem:
        """A Problem on ``path`` located by `locate` (of ``at`` when given: the key that caused it)."""
        return Problem(path, message, hint).located(*self.locate(at or path))


# ---------------------------------------------------------------------------------------------
# YAML parsing with line numbers


def _line_map(text: str, name: str) -> dict[str, tuple[str, int]]:
    """Dotted path -> (file, 1-based line) for every key (and list item) of a YAML document.

    Keys whose value is not a mapping (scalars, lists) are also listed under ``_REPLACES`` so that
    merging line maps can drop what they hide in a parent file.
    """
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:  # reported by _parse with the same mark
        raise _yaml_error(exc, name) from None
    _check_expansion(root, text, name)
    out: dict[str, tuple[str, int]] = {}
    replaces: set[str] = set()

    def walk(node: yaml.Node, prefix: str) -> None:
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                if not isinstance(key_node, yaml.ScalarNode):
                    continue
                if key_node.value == "<<":  # YAML merge key: its content lands at this level
                    walk(value_node, prefix)
                    continue
                path = f"{prefix}.{key_node.value}" if prefix else str(key_node.value)
                out[path] = (name, key_node.start_mark.line + 1)
                if not isinstance(value_node, yaml.MappingNode):
                    replaces.add(path)
                walk(value_node, path)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                path = f"{prefix}.{i}"
                out[path] = (name, item.start_mark.line + 1)
                walk(item, path)

    if root is not None:
        walk(root, "")
    out[_REPLACES] = replaces  # type: ignore[assignment]
    return out


#: Most YAML nodes a spec may expand to once its aliases (``*name``) are replaced by what they name.
#: A real spec has a few hundred; an "alias bomb" (each level repeating the previous one ten times)
#: has 10**levels and would take minutes and gigabytes to expand.
MAX_YAML_NODES = 100_000


def _check_expansion(root: Optional[yaml.Node], text: str, name: str) -> None:
    """Refuse a document whose aliases expand past `MAX_YAML_NODES` nodes, or refer to themselves,
    before anything expands them. The count is memoised per node, so it costs one pass over the
    composed (unexpanded) graph."""
    import re

    sizes: dict[int, int] = {}
    active: set[int] = set()

    def line_of_alias() -> Optional[int]:
        m = re.search(r"(?m)^[^#\n]*?(?<![\w&])\*[\w-]+", text)
        return text.count("\n", 0, m.start()) + 1 if m else None

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in active:
            raise SpecError([Problem("<yaml>", "a YAML alias refers to the node that contains it (a recursive alias)",
                                     "remove the alias (*name) inside its own anchor (&name)", name, line_of_alias())])
        active.add(key)
        n = 1
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                n += size(k) + size(v)
                if n > MAX_YAML_NODES:
                    break
        elif isinstance(node, yaml.SequenceNode):
            for item in node.value:
                n += size(item)
                if n > MAX_YAML_NODES:
                    break
        active.discard(key)
        sizes[key] = n
        if n > MAX_YAML_NODES:
            raise SpecError([Problem("<yaml>", f"YAML aliases expand this spec to more than {MAX_YAML_NODES:,} values",
                                     "a spec holds a few hundred values; remove the repeated aliases (*name)",
                                     name, line_of_alias())])
        return n

    if root is not None:
        size(root)


#: Line-map entry holding the set of keys whose value replaces (rather than merges into) a parent's.
_REPLACES = "\0replaces"


def _yaml_error(exc: yaml.YAMLError, name: str) -> SpecError:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    line = mark.line + 1 if mark is not None else None
    what = " ".join(str(x) for x in (getattr(exc, "context", None), getattr(exc, "problem", None)) if x)
    return SpecError([Problem("<yaml>", f"YAML syntax error: {what or exc}",
                              "check indentation, quoting and ':' after keys", name, line)])


def _parse(text: str, name: str) -> tuple[DictConfig, dict[str, tuple[str, int]]]:
    """Parse one YAML document into an OmegaConf mapping and its line map."""
    lines = _line_map(text, name)
    try:
        cfg = OmegaConf.create(text) if text.strip() else OmegaConf.create({})
    except yaml.YAMLError as exc:  # duplicate keys and other constructor errors
        raise _yaml_error(exc, name) from None
    except OmegaConfBaseException as exc:
        raise SpecError([Problem("<yaml>", f"cannot read spec: {exc}", "", name, None)]) from None
    if not isinstance(cfg, DictConfig):
        first = next((i for i, line in enumerate(text.splitlines(), 1) if line.strip() and not line.lstrip().startswith("#")), 1)
        raise SpecError([Problem("<yaml>", "a spec must be a YAML mapping (key: value lines)", "", name, first)])
    return cfg, lines


# ---------------------------------------------------------------------------------------------
# Inheritance


def _display(path: Path) -> str:
    """A short path for messages: relative to the working directory when below it."""
    try:
        rel = os.path.relpath(path)
    except ValueError:  # other drive (Windows)
        return str(path)
    return str(path.absolute()) if rel.startswith("..") else rel


def _read_chain(path: Path, stack: tuple[Path, ...], via: Optional[Location]
                ) -> tuple[DictConfig, dict[str, tuple[str, int]], list[str]]:
    """Load ``path`` and its parents; returns the merged config, its line map and the files used."""
    real = path.resolve()
    name = _display(path)
    if real in stack:
        cycle = " -> ".join(_display(p) for p in (*stack, real))
        raise SpecError([Problem(EXTENDS_KEY, f"inheritance cycle: {cycle}",
                                 "remove one of the extends: keys", *(via or (name, None)))])
    if not path.is_file():
        where = via or (name, None)
        what = "parent spec" if via else "spec file"
        raise SpecError([Problem(EXTENDS_KEY if via else "<file>", f"{what} not found: {name}",
                                 "extends: paths are relative to the file that contains them" if via else "",
                                 *where)])
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError([Problem("<file>", f"cannot read {name}: {exc}", "spec files are UTF-8 text",
                                 *(via or (name, None)))]) from None
    return _build(text, name, path.parent, (*stack, real))


def _build(text: str, name: str, folder: Path, stack: tuple[Path, ...]
           ) -> tuple[DictConfig, dict[str, tuple[str, int]], list[str]]:
    cfg, lines = _parse(text, name)
    parents = cfg.get(EXTENDS_KEY) if EXTENDS_KEY in cfg else None
    if EXTENDS_KEY in cfg:
        cfg.pop(EXTENDS_KEY)
    ext_loc = lines.pop(EXTENDS_KEY, (name, None))
    for key in [k for k in lines if k.startswith(EXTENDS_KEY + ".")]:
        lines.pop(key)
    if parents is None:
        lines.pop(_REPLACES, None)
        return cfg, lines, [name]
    if isinstance(parents, str):
        parents = [parents]
    elif OmegaConf.is_list(parents) and all(isinstance(p, str) for p in parents):
        parents = list(parents)
    else:
        raise SpecError([Problem(EXTENDS_KEY, "extends must be a file path or a list of file paths",
                                 "e.g. extends: base/simplerl-zoo.yaml", *ext_loc)])
    merged: DictConfig = OmegaConf.create({})
    merged_lines: dict[str, tuple[str, int]] = {}
    sources: list[str] = []
    for parent in parents:
        pcfg, plines, psources = _read_chain(folder / parent, stack, ext_loc)
        merged = OmegaConf.merge(merged, pcfg)
        _overlay(merged_lines, plines)
        sources.extend(s for s in psources if s not in sources)
    merged = OmegaConf.merge(merged, cfg)
    _overlay(merged_lines, lines)
    return merged, merged_lines, [name, *(s for s in sources if s != name)]


def _overlay(base: dict[str, tuple[str, int]], top: dict[str, tuple[str, int]]) -> None:
    """Merge line maps: a key set in ``top`` wins; a scalar/list set in ``top`` hides older children."""
    top = dict(top)
    replaces = top.pop(_REPLACES, set())
    for key in replaces:
        prefix = key + "."
        for stale in [k for k in base if k.startswith(prefix)]:
            del base[stale]
    base.update(top)
    base.pop(_REPLACES, None)


# ---------------------------------------------------------------------------------------------
# Overrides


def _schema_has_path(parts: Sequence[str]) -> tuple[bool, list[str]]:
    """Whether dotted ``parts`` names a field of the spec schema; else the valid names at the failure."""
    from schemas import ExperimentSpec

    annotation: Any = ExperimentSpec
    for part in parts:
        model = section_model(annotation)
        sequences = [t for t in _flatten_annotation(annotation) if typing.get_origin(t) in (list, tuple)]
        if model is not None:
            if part not in model.model_fields:
                return False, list(model.model_fields)
            annotation = model.model_fields[part].annotation
        elif sequences and part.lstrip("-").isdigit():
            args = typing.get_args(sequences[0])
            annotation = args[0] if args else Any
        else:
            return False, []
    return True, []


def _flatten_annotation(annotation: Any) -> list[Any]:
    """Members of Optional/Union annotations (others as a one-element list)."""
    if typing.get_origin(annotation) is Union or type(annotation).__name__ == "UnionType":
        out: list[Any] = []
        for arg in typing.get_args(annotation):
            out.extend(_flatten_annotation(arg))
        return out
    return [annotation]


def section_model(annotation: Any) -> Optional[type[BaseModel]]:
    """The pydantic model (spec section) an annotation holds, e.g. Optional[Architecture]; else None."""
    from pydantic import BaseModel

    return next((t for t in _flatten_annotation(annotation) if isinstance(t, type) and issubclass(t, BaseModel)), None)


def _apply_overrides(cfg: DictConfig, lines: dict[str, tuple[str, int]], overrides: Sequence[str],
                     problems: list[Problem]) -> DictConfig:
    """Apply each override; bad ones are appended to ``problems`` and skipped."""
    for item in overrides:
        where = f"<override {item}>"
        if "=" not in item:
            problems.append(Problem("<override>", f"override {item!r} is not key=value",
                                    "e.g. rollout.tensor_parallel=2", where, None))
            continue
        key = item.split("=", 1)[0].strip()
        parts = key.split(".")
        if not key or any(p == "" for p in parts):
            problems.append(Problem(key or "<override>", f"override {item!r} has an empty key", "", where, None))
            continue
        known, choices = _schema_has_path(parts)
        exists = OmegaConf.select(cfg, key, default="__missing__", throw_on_missing=False) != "__missing__"
        if not known and not exists:
            close = difflib.get_close_matches(parts[-1], choices, n=1)
            parent = ".".join(parts[:-1])
            if close:
                hint = f"did you mean '{'.'.join([*parts[:-1], close[0]])}'?"
            elif choices:
                hint = f"fields of {parent or 'the spec'}: {', '.join(choices)}"
            else:
                hint = f"'{parent}' has no sub-fields" if parent else ""
            problems.append(Problem(key, f"unknown field '{key}' in override '{item}'", hint, where, None))
            continue
        try:
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist([item]))
        except (OmegaConfBaseException, yaml.YAMLError, TypeError) as exc:  # TypeError: an index into a YAML list
            problems.append(Problem(key, f"cannot apply override '{item}': {exc}", "", where, None))
            continue
        prefix = key + "."
        for stale in [k for k in lines if k.startswith(prefix)]:
            del lines[stale]
        lines[key] = (where, None)  # type: ignore[assignment]
    return cfg


# ---------------------------------------------------------------------------------------------
# Interpolation


def _resolve(cfg: DictConfig, located: LoadedSpec) -> dict:
    try:
        data = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except OmegaConfBaseException:
        raise SpecError(_interpolation_problems(cfg, located)) from None
    assert isinstance(data, dict)
    return data


def _interpolation_problems(cfg: Any, located: LoadedSpec, prefix: str = "") -> list[Problem]:
    """Resolve leaf by leaf to name every key whose value cannot be resolved."""
    problems: list[Problem] = []
    keys = list(cfg.keys()) if OmegaConf.is_dict(cfg) else list(range(len(cfg)))
    for key in keys:
        path = f"{prefix}.{key}" if prefix else str(key)
        try:
            value = cfg[key]
        except MissingMandatoryValue:
            problems.append(located.problem(path, "required value not set (??? in the spec)",
                                            f"set {path} in your spec or with {path}=..."))
            continue
        except OmegaConfBaseException as exc:
            msg = str(exc).splitlines()[0]
            problems.append(located.problem(path, f"cannot resolve interpolation: {msg}",
                                            "interpolations use absolute dotted paths, e.g. ${data.max_response_length}"))
            continue
        if OmegaConf.is_config(value):
            problems.extend(_interpolation_problems(value, located, path))
    if not problems and not prefix:
        problems.append(Problem("<spec>", "cannot resolve the spec's interpolations", "", *located.locate("")))
    return problems


# ---------------------------------------------------------------------------------------------
# Public API


def load_spec(source: Union[str, Path], overrides: Sequence[str] = (), *, defer: bool = False) -> LoadedSpec:
    """Load a spec file with its parents, apply ``key=value`` overrides and resolve interpolations.

    ``overrides``: ``key=value`` strings, or one string of them separated by spaces.
    ``source`` is a path to a YAML file; a string containing a newline is read as YAML text itself
    (named ``<string>``, with ``extends:`` relative to the working directory).
    Raises `SpecError` (every problem found, each with file and line) when the spec cannot be read.
    ``defer=True``: bad overrides are skipped and kept in ``LoadedSpec.problems`` instead, so that
    `compiler.validate.validate` reports them together with every other problem.
    """
    if isinstance(overrides, str):  # one string of overrides, as a shell would split it
        import shlex

        overrides = shlex.split(overrides)
    if isinstance(source, str) and "\n" in source:
        cfg, lines, sources = _build(source, "<string>", Path.cwd(), ())
    else:
        cfg, lines, sources = _read_chain(Path(source), (), None)
    overrides = [str(o) for o in overrides]
    loaded = LoadedSpec(data={}, sources=sources, overrides=overrides, locations=lines)
    if overrides:
        cfg = _apply_overrides(cfg, lines, overrides, loaded.problems)
    if loaded.problems and not defer:
        raise SpecError(loaded.problems)
    try:
        loaded.data = _resolve(cfg, loaded)
    except SpecError as exc:
        raise SpecError([*loaded.problems, *exc.problems]) from None
    return loaded
