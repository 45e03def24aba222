"""Pure resume checks (engine.runtime.resume) and the thread count of `cluster.cpu_threads: auto`."""

from __future__ import annotations

import copy

import pytest

from engine.runtime.resume import changed_keys, describe_resume, is_finished, is_safe, plan_differences
from engine.core.threads import auto_threads, resolve_threads, usable_cpus


def _plan() -> dict:
    return {"spec": {"name": "x", "rollout": {"n": 8, "temperature": 1.0}, "trainer": {"lr": 1e-6, "total_steps": 100},
                     "tracking": {"backend": "aim"}, "checkpoint": {"keep_last": 2}, "evaluation": {"every": 5}},
            "trainer": {"data_parallel": 2}, "hash": "aaaa", "estimates": {"step_time_s": 10.0}}


def test_maths_changes_are_named_and_safe_changes_are_not():
    a = _plan()
    b = copy.deepcopy(a)
    b["spec"]["rollout"]["n"] = 16
    b["spec"]["trainer"]["lr"] = 1e-5
    b["spec"]["trainer"]["total_steps"] = 200
    b["spec"]["tracking"]["backend"] = "none"
    b["spec"]["checkpoint"]["keep_last"] = 5
    b["spec"]["evaluation"]["every"] = 10
    b["hash"], b["estimates"]["step_time_s"] = "bbbb", 20.0
    assert plan_differences(a, b) == ["rollout.n", "trainer.lr"]
    assert "trainer.total_steps" in changed_keys(a, b) and "plan.hash" in changed_keys(a, b)
    b["trainer"]["data_parallel"] = 4  # the placement changes the layout of the state
    assert "plan.trainer.data_parallel" in plan_differences(a, b)
    assert plan_differences(a, copy.deepcopy(a)) == []


def test_safe_keys_match_whole_keys_or_sections():
    assert is_safe("tracking.experiment") and is_safe("trainer.total_steps")
    assert not is_safe("trainer.total_steps_x") and not is_safe("trainer.lr")


def test_describe_resume_names_the_steps_redone_and_left():
    assert describe_resume(4, [1, 2, 3, 4, 5, 6], 10) == (
        "resuming from the checkpoint of step 4; steps 5-6 ran after it and will be redone; steps 5-10 to go")
    assert describe_resume(4, [1, 2, 3, 4], 5) == "resuming from the checkpoint of step 4; step 5 to go"
    assert describe_resume(None, [1], 3).startswith("resuming: no checkpoint, starting from step 0; step 1 ran")
    assert describe_resume(4, [5, 7], 8).split("; ")[1] == "steps 5, 7 ran after it and will be redone"


def test_a_run_is_finished_only_when_checkpointed_and_summarised_at_total_steps():
    done = {"complete": True, "steps_done": 40}
    assert is_finished(40, 40, done)
    assert not is_finished(40, 60, done)  # extended: 20 steps to go
    assert not is_finished(30, 40, done) and not is_finished(40, 40, None)  # crashed in the export
    assert not is_finished(40, 40, {"complete": False, "steps_done": 40})


@pytest.mark.parametrize("cpus, load, want", [
    (2, 0.1, 2),    # idle 2-core machine: both cores
    (2, 1.0, 1),    # one core busy elsewhere
    (2, 12.0, 1),   # a busy machine (load 12): one thread, never 0
    (16, 3.2, 13),
    (16, 0.0, 16),
    (1, 0.0, 1),
])
def test_auto_threads_leave_out_the_busy_cpus(cpus, load, want):
    assert auto_threads(cpus, load) == want


def test_resolve_threads():
    assert resolve_threads(3) == 3 and resolve_threads(None) is None
    assert 1 <= resolve_threads("auto") <= usable_cpus()


def test_quickstart_and_default_spec_use_auto_threads():
    from pathlib import Path

    from compiler import compile_spec
    from schemas.cluster import ClusterSpec

    assert ClusterSpec().cpu_threads == "auto"
    root = Path(__file__).resolve().parents[2]
    assert compile_spec(root / "specs" / "quickstart.yaml").spec.cluster.cpu_threads == "auto"
