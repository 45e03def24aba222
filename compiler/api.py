"""The compiler's entry points: YAML spec (+ overrides) -> validated spec -> `Plan`."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence, Union

from compiler.load import LoadedSpec, load_spec
from compiler.plan import Plan
from compiler.validate import validate
from schemas import Architecture, ExperimentSpec

Source = Union[str, Path]
Overrides = Union[str, Sequence[str]]


def override_list(overrides: Overrides) -> list[str]:
    """``key=value`` overrides as a list: a string is split as a shell would
    (``"a=1 b='[x, y]'"`` -> ``["a=1", "b=[x, y]"]``). Anything but a string or a sequence of
    strings is a `TypeError` naming what was passed."""
    import shlex

    if isinstance(overrides, str):
        return shlex.split(overrides)
    if isinstance(overrides, (bytes, dict)) or not all(isinstance(o, str) for o in overrides):
        raise TypeError(f"overrides must be 'key=value' strings (a list, or one string), not {overrides!r}")
    return list(overrides)


def resolve_spec(source: Source, overrides: Overrides = (), *, check_files: bool = False) -> ExperimentSpec:
    """The fully resolved, validated spec (inheritance, interpolation, overrides and defaults applied).
    ``overrides``: ``key=value`` strings, or one string of them separated by spaces."""
    spec, _ = validate(load_spec(source, override_list(overrides), defer=True), check_files=check_files)
    return spec


def load_and_validate(source: Source, overrides: Overrides = (), *, check_files: bool = False
                      ) -> tuple[LoadedSpec, ExperimentSpec, Architecture]:
    """Load and validate; returns the loaded spec (for locations), the typed spec and the architecture."""
    loaded = load_spec(source, override_list(overrides), defer=True)
    spec, arch = validate(loaded, check_files=check_files)
    return loaded, spec, arch


def compile_spec(source: Source, overrides: Overrides = (), *, check_files: bool = False) -> Plan:
    """Compile a spec file to a `Plan` (feasible or not). Raises `SpecError` for an invalid spec.

    ``overrides``: ``key=value`` strings, or one string of them separated by spaces
    (``compile_spec(path, "rollout.n=16 trainer.lr=1e-6")``). ``check_files``: require local data
    files to exist (``engine run``); ``engine plan`` does not.
    """
    from compiler.lower import lower  # placement and memory model

    loaded, spec, arch = load_and_validate(source, overrides, check_files=check_files)
    return lower(spec, arch, loaded.sources)


def compile_with_source(source: Source, overrides: Overrides = ()) -> tuple[LoadedSpec, Plan]:
    """`compile_spec` once, keeping the loaded spec so later checks (`require_data_files`) can name
    the YAML file and line of what they find."""
    from compiler.lower import lower

    loaded, spec, arch = load_and_validate(source, overrides)
    return loaded, lower(spec, arch, loaded.sources)


def require_data_files(loaded: LoadedSpec, plan: Plan) -> None:
    """Raise `SpecError` naming every local data file the plan reads that does not exist, with the file
    and line that set it (``engine run`` needs them; ``engine plan`` does not)."""
    from compiler.errors import SpecError
    from compiler.validate import missing_data_files

    problems = [loaded.problem(key, f"data file not found: {value}", hint) for key, value, hint in missing_data_files(plan.spec)]
    if problems:
        raise SpecError(problems)
