"""The corpus of broken specs: each is rejected, naming its field and the file:line that set it.

Each ``broken/*.yaml`` starts with comment lines:
``# expect: <dotted field path>`` (required), ``# expect-text: <substring of the message or hint>``
(optional, repeatable), ``# needs: <module>`` (optional: a rule owned by another module).
The line that causes the problem carries a trailing ``# <-`` marker; the problem must point at it.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import pytest

from compiler.errors import SpecError
from compiler.load import load_spec
from compiler.validate import validate

BROKEN = Path(__file__).parent / "broken"
CASES = sorted(BROKEN.glob("*.yaml"))


def _header(path: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("# ") and ":" in line:
            key, _, value = line[2:].partition(":")
            if key in ("expect", "expect-text", "needs"):
                out.setdefault(key, []).append(value.strip())
    return out


def _marker_line(path: Path) -> int | None:
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.rstrip().endswith("# <-"):
            return i
    return None


def test_corpus_is_large_enough():
    assert len(CASES) >= 30


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_broken_spec_is_rejected_with_location(path: Path):
    header = _header(path)
    assert header.get("expect"), f"{path.name} lacks an '# expect: <field>' line"
    for module in header.get("needs", []):
        importlib.import_module(module)  # the module that owns the rule: missing is a failure
    with pytest.raises(SpecError) as info:
        validate(load_spec(path))
    err = info.value
    expected = header["expect"][0]
    matching = [p for p in err.problems if p.path == expected]
    assert matching, f"no problem on {expected!r}; got:\n{err.render()}"
    problem = matching[0]
    assert problem.file is not None and problem.line is not None, str(problem)
    assert f"{problem.file}:{problem.line}" in err.render()
    assert expected in err.render()
    marker = _marker_line(path)
    if marker is not None:
        assert os.path.samefile(problem.file, path), f"located in {problem.file}, expected {path}"
        assert problem.line == marker, f"{problem} (expected line {marker})"
    text = f"{problem.message}\n{problem.hint}"
    for needle in header.get("expect-text", []):
        assert needle in text, f"{needle!r} not in {text!r}"
