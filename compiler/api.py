"""The compiler's entry points: YAML spec (+ overrides) -> validated spec -> `Plan`."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence, Union

from compiler.load import LoadedSpec, load_spec
from compiler.plan import Plan
from compiler.validate import validate
from schemas import Architecture, ExperimentSpec

Source = Union[str, Path]


def resolve_spec(source: Source, overrides: Sequence[str] = (), *, check_files: bool = False) -> ExperimentSpec:
    """The fully resolved, validated spec (inheritance, interpolation, overrides and defaults applied)."""
    spec, _ = validate(load_spec(source, overrides, defer=True), check_files=check_files)
    return spec


def load_and_validate(source: Source, overrides: Sequence[str] = (), *, check_files: bool = False
                      ) -> tuple[LoadedSpec, ExperimentSpec, Architecture]:
    """Load and validate; returns the loaded spec (for locations), the typed spec and the architecture."""
    loaded = load_spec(source, overrides, defer=True)
    spec, arch = validate(loaded, check_files=check_files)
    return loaded, spec, arch


def compile_spec(source: Source, overrides: Sequence[str] = (), *, check_files: bool = False) -> Plan:
    """Compile a spec file to a `Plan` (feasible or not). Raises `SpecError` for an invalid spec.

    ``check_files``: require local data files to exist (``engine run``); ``engine plan`` does not.
    """
    from compiler.lower import lower  # placement and memory model

    loaded, spec, arch = load_and_validate(source, overrides, check_files=check_files)
    return lower(spec, arch, loaded.sources)
