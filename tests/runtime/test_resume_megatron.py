"""The Megatron trainer's sharded checkpoints: SIGKILL mid-step, then --resume, reproduces the run."""

import os

import pytest

from tests.runtime.conftest import write_spec
from tests.runtime.test_resume import ROOT, STEPS, _engine, _records, assert_same_metrics, kill_inside_step_4

pytestmark = pytest.mark.needs("megatron")


@pytest.mark.slow
def test_megatron_sigkill_mid_step_then_resume_matches_uninterrupted(tmp_path):
    spec = write_spec(tmp_path, steps=STEPS, every=2)
    env = {**os.environ, "ENGINE_CACHE_DIR": str(tmp_path / "cache"), "PYTHONPATH": str(ROOT)}
    megatron = "trainer.backend=megatron"

    full = _engine(str(spec), "--run-dir", str(tmp_path / "full"), megatron, env=env)
    assert full.wait(timeout=600) == 0, full.stdout.read()

    killed = tmp_path / "killed"
    proc = _engine(str(spec), "--run-dir", str(killed), megatron, env=env)
    kill_inside_step_4(proc, killed, 600)
    assert max(_records(killed)) < STEPS
    assert (killed / "checkpoints" / "step_000002" / "trainer").is_dir()  # the sharded trainer checkpoint

    resumed = _engine(str(killed), "--resume", env=env)
    out, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, out
    assert_same_metrics(tmp_path / "full", killed)
