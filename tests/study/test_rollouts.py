"""Saved rollouts: the writer (atomic, keep-last, resume) and a real tiny training run's folder."""

import json

import pyarrow.parquet as pq
import pytest

from engine.core import rollouts as R
from tests.study.conftest import BATCH, N, STEPS, VAL


def _write(w, step, groups=2, n=2):
    k = groups * n
    return w.step(step, [f"p{g}" for g in range(groups)], [f"r{step}-{i}" for i in range(k)], ["1"] * k,
                  ["1", None] * (k // 2), [1.0, 0.0] * (k // 2), [True, False] * (k // 2), ["stop", "length"] * (k // 2),
                  list(range(k)), n, ["src"] * groups, [1, 2][:groups])


def test_writer_columns_keep_last_and_no_partial_files(tmp_path):
    w = R.RolloutWriter(tmp_path, keep_steps=2)
    for s in (1, 2, 3):
        _write(w, s)
    assert sorted(R.step_files(tmp_path)) == [2, 3]
    rows = R.read_rollouts(R.step_files(tmp_path)[3])
    assert list(rows[0]) == list(R.STEP_COLUMNS)
    assert [(r["group"], r["sample"], r["prompt"]) for r in rows] == [(0, 0, "p0"), (0, 1, "p0"), (1, 0, "p1"), (1, 1, "p1")]
    assert [r["extracted"] for r in rows] == ["1", None, "1", None] and rows[1]["finish_reason"] == "length"
    assert not [p for p in (tmp_path / "rollouts").iterdir() if p.name.startswith(".")]
    with pytest.raises(ValueError):
        w.step(4, ["p"], ["a", "b"], ["1"], [None], [0.0], [False], ["stop"], [1], 2)


def test_resume_removes_steps_after_the_checkpoint(tmp_path):
    w = R.RolloutWriter(tmp_path)
    for s in (1, 2, 3):
        _write(w, s)
    w.evaluation(2, "val", ["p"], ["a"], ["1"], ["1"], [1.0], [True], ["stop"], [3], 1)
    w.evaluation(3, "eval/aime24", ["p"], ["a"], ["1"], ["1"], [1.0], [True], ["stop"], [3], 1)
    (tmp_path / "rollouts" / ".step_000004.parquet.tmp-1").write_text("half")  # a crash mid-write
    R.RolloutWriter(tmp_path, resume_step=2)
    assert sorted(R.step_files(tmp_path)) == [1, 2]
    assert list(R.eval_files(tmp_path)) == [(2, "val")]
    assert not [p for p in (tmp_path / "rollouts").iterdir() if p.name.startswith(".")]


@pytest.mark.slow
def test_a_real_run_saves_every_step_and_evaluation(tiny_run):
    files = R.step_files(tiny_run)
    assert sorted(files) == list(range(1, STEPS + 1))
    metrics = {r["step"]: r for r in map(json.loads, (tiny_run / "metrics.jsonl").read_text().splitlines())}
    for step, path in files.items():
        rows = R.read_rollouts(path)
        assert len(rows) == BATCH * N
        assert {r["step"] for r in rows} == {step}
        # the saved rewards, correctness and lengths are the ones the step logged
        assert sum(r["reward"] for r in rows) / len(rows) == pytest.approx(metrics[step]["reward/mean"], abs=1e-6)
        assert sum(r["correct"] for r in rows) / len(rows) == pytest.approx(metrics[step]["reward/accuracy"])
        assert sum(r["length"] for r in rows) / len(rows) == pytest.approx(metrics[step]["response_length/mean"])
        assert all(r["prompt"].startswith("Question:") and r["finish_reason"] in ("stop", "length") for r in rows)
        assert all(r["data_source"] == "synthetic/arithmetic" and r["level"] in (1, 2) for r in rows)
    evals = R.eval_files(tiny_run)
    assert sorted(evals) == [(0, "val"), (2, "val"), (4, "val")]
    for (step, _), path in evals.items():
        rows = R.read_rollouts(path)
        assert len(rows) == VAL
        assert sum(r["correct"] for r in rows) / VAL == pytest.approx(metrics[step]["val/accuracy"])


@pytest.mark.slow
def test_resumed_run_rewrites_the_steps_after_its_checkpoint(tiny_run, tmp_path, engine_cache):
    """Stop after step 3 (checkpoint at 2), resume: the folder holds steps 1-4 once each, equal to
    the uninterrupted run's."""
    from compiler import compile_spec
    from engine.runtime.loop import train
    from tests.study.conftest import OVERRIDES, tiny_spec

    plan = compile_spec(str(tiny_spec(tmp_path)), OVERRIDES)
    run = tmp_path / "run"
    train(plan, run, stop_after=3, progress_stream=open("/dev/null", "w"))
    assert sorted(R.step_files(run)) == [1, 2, 3]
    train(plan, run, resume=True, progress_stream=open("/dev/null", "w"))
    assert sorted(R.step_files(run)) == [1, 2, 3, 4]
    for step in range(1, STEPS + 1):
        a = pq.read_table(str(R.step_files(run)[step])).to_pylist()
        b = pq.read_table(str(R.step_files(tiny_run)[step])).to_pylist()
        assert [(r["response"], r["reward"]) for r in a] == [(r["response"], r["reward"]) for r in b], step
    assert sorted(R.eval_files(run)) == [(0, "val"), (2, "val"), (4, "val")]
