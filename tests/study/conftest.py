"""Shared fixtures of the study tests: one tiny real training run (random-init Qwen2, builtin
tokenizer, synthetic data) whose run folder holds saved rollouts, and the shared data folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.runtime.conftest import write_spec

ROOT = Path(__file__).resolve().parents[2]
#: $ENGINE_SHARED_DATA, else ../shared/data beside the checkout (as tests/reward/cases/derive.py finds it).
SHARED_DATA = Path(os.environ.get("ENGINE_SHARED_DATA") or ROOT.parent / "shared" / "data")

#: The tiny run: 4 steps of 4 prompts x 4 samples, evaluation of 8 val prompts at steps 0, 2 and 4.
STEPS, BATCH, N, VAL = 4, 4, 4, 8


@pytest.fixture(scope="session")
def engine_cache(tmp_path_factory):
    """Built base models go to a per-session cache, never to the user's home."""
    old = os.environ.get("ENGINE_CACHE_DIR")
    os.environ["ENGINE_CACHE_DIR"] = str(tmp_path_factory.getbasetemp() / "engine-cache")
    yield
    if old is None:
        os.environ.pop("ENGINE_CACHE_DIR", None)
    else:
        os.environ["ENGINE_CACHE_DIR"] = old


#: Overrides of the tiny spec: also evaluate the base model (step 0).
OVERRIDES = ["evaluation.before_training=true"]


def tiny_spec(folder: Path) -> Path:
    return write_spec(folder, steps=STEPS, every=2, eval_every=2)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, engine_cache) -> Path:
    """A finished tiny run folder (trained once per session)."""
    from engine.cli import main

    folder = tmp_path_factory.mktemp("tiny-run")
    run = folder / "run"
    assert main(["run", str(tiny_spec(folder)), *OVERRIDES, "--run-dir", str(run), "--quiet"]) == 0
    return run
