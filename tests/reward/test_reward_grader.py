import json
import subprocess
import sys
from pathlib import Path

import pytest

from engine.reward import GradeResult, Grader, RewardConfig, grade
from engine.reward.cli import grade_command
from engine.reward.pool import VerifierPool

REPO = Path(__file__).resolve().parents[2]
HELPER = "reward_helpers:misbehaving_verify"


def test_config_validation():
    with pytest.raises(ValueError):
        RewardConfig(format="loose")
    with pytest.raises(ValueError):
        RewardConfig(workers=-1)
    with pytest.raises(ValueError):
        RewardConfig(timeout_s=0)


@pytest.mark.parametrize("fmt,expected", [
    ("none", [1.0, 1.0, 0.0, 0.0, 0.0]),
    ("strict", [1.0, -1.0, 0.0, -1.0, -1.0]),
    ("independent", [1.0, 0.5, -0.5, -1.0, -1.0]),
])
def test_format_modes(fmt, expected):
    responses = [r"\boxed{4}", "The answer is 4", r"\boxed{5}", "The answer is 5", "nothing"]
    res = grade(responses, ["4"] * 5, RewardConfig(format=fmt, workers=0))
    assert [r.reward for r in res] == expected
    assert [r.boxed for r in res] == [True, False, True, False, False]
    assert res[4].status == "no_answer" and res[4].extracted is None


def test_grade_result_fields_and_stats():
    with Grader(RewardConfig(workers=0)) as g:
        res = g.grade_batch([r"\boxed{\frac12}", r"\boxed{x^2-1}", "none"], ["0.5", "(x-1)(x+1)", "1"])
        assert all(isinstance(r, GradeResult) for r in res)
        assert [r.correct for r in res] == [True, True, False]
        st = g.stats()
    assert {k: st[k] for k in ("total", "correct", "timeouts", "errors", "no_answer")} == \
        {"total": 3, "correct": 2, "timeouts": 0, "errors": 0, "no_answer": 1}


def test_length_mismatch_is_an_error():
    with pytest.raises(ValueError):
        grade(["a"], ["1", "2"], RewardConfig(workers=0))


def test_pool_matches_in_process_and_dedups():
    responses = [r"\boxed{x^2+2x+1}", r"\boxed{\sqrt{8}}", r"\boxed{(1,2)}", r"\boxed{x^2+2x+1}"] * 3
    golds = ["(x+1)^2", r"2\sqrt2", "(2,1)", "(x+1)^2"] * 3
    ref = [r.correct for r in grade(responses, golds, RewardConfig(workers=0))]
    with Grader(RewardConfig(workers=2, timeout_s=20)) as g:
        res = g.grade_batch(responses, golds)
        assert [r.correct for r in res] == ref == [True, True, False, True] * 3
        assert g.stats()["symbolic"] == 3  # 12 items, 3 distinct pairs needing sympy
        res2 = g.grade_batch(responses, golds)  # second step: verdict cache
        assert [r.correct for r in res2] == ref
        assert g.stats()["cached"] == 12


def test_pool_kills_worker_stuck_in_c_and_continues():
    pool = VerifierPool(2, timeout_s=1.0, verify_fn=HELPER)
    try:
        out = pool.verify([("hang-in-c", "1"), ("2", "2"), ("x^2", "x*x"), ("3", "4")])
        # the stuck worker was killed at its deadline (not waited for) and replaced
        assert out == [("timeout", False), ("ok", True), ("ok", True), ("ok", False)]
        assert pool.killed == 1
        assert pool.verify([("5", "5")]) == [("ok", True)]  # the replacement works
    finally:
        pool.close()


def test_pool_survives_crash_exception_and_memory_blowup():
    pool = VerifierPool(1, timeout_s=20.0, memory_mb=1024, verify_fn=HELPER)
    try:
        out = pool.verify([("crash", "1"), ("raise", "1"), ("allocate", "1"), ("7", "7")])
        assert out == [("error", False), ("error", False), ("error", False), ("ok", True)]
    finally:
        pool.close()


def test_grader_counts_timeouts_as_wrong():
    g = Grader(RewardConfig(workers=1, timeout_s=1.0))
    from engine.reward.pool import VerifierPool as VP
    g._pool = VP(1, 1.0, verify_fn=HELPER)
    try:
        res = g.grade_batch([r"\boxed{hang-in-c}", r"\boxed{\sqrt{4}}"], ["1", "2"])
        assert [(r.status, r.correct, r.reward) for r in res] == [("timeout", False, 0.0), ("ok", True, 1.0)]
        assert g.stats()["timeouts"] == 1
    finally:
        g.close()


def test_cli_grades_file_and_reports_bad_rows(tmp_path, capsys):
    src = tmp_path / "in.jsonl"
    rows = [
        {"response": r"so \boxed{\frac{1}{2}}", "ground_truth": "0.5", "id": 7},
        {"response": "The answer is 8.", "ground_truth": "9"},
        {"response": r"\boxed{x^2-1}", "ground_truth": "(x+1)(x-1)"},
        {"response": "missing gold"},
    ]
    src.write_text("\n".join(json.dumps(r) for r in rows) + "\nnot json\n")
    out = tmp_path / "out.jsonl"
    rc = grade_command([str(src), "--out", str(out), "--workers", "0", "--format", "strict"])
    assert rc == 1  # bad rows were present
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(got) == 5
    assert got[0]["id"] == 7 and got[0]["correct"] is True and got[0]["reward"] == 1.0
    assert got[0]["extracted"] == r"\frac{1}{2}"
    assert got[1]["correct"] is False and got[1]["reward"] == -1.0
    assert got[2]["correct"] is True
    assert "error" in got[3] and "error" in got[4]
    summary = capsys.readouterr().out
    assert "bad_rows: 2" in summary and "rows: 5" in summary


def test_module_entry_point(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"response": r"\boxed{3}", "ground_truth": "3"}) + "\n")
    out = tmp_path / "out.jsonl"
    p = subprocess.run([sys.executable, "-m", "engine.reward.cli", str(src), "--out", str(out),
                        "--workers", "1"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert json.loads(out.read_text())["correct"] is True


def test_import_is_light():
    code = "import sys, engine.reward; print('torch' in sys.modules, 'sympy' in sys.modules)"
    p = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert p.stdout.split() == ["False", "False"], p.stderr


def test_workers_do_not_rerun_the_parent_main(tmp_path):
    # a training script without a __main__ guard: spawn/forkserver children would re-run it
    log = tmp_path / "runs.txt"
    script = tmp_path / "train.py"
    script.write_text(
        "import sys\n"
        f"open({str(log)!r}, 'a').write('ran\\n')\n"
        "from engine.reward import Grader, RewardConfig\n"
        "with Grader(RewardConfig(workers=2, timeout_s=30)) as g:\n"
        "    r = g.grade_batch([r'\\boxed{x^2+2x+1}', r'\\boxed{\\sqrt{8}}'], ['(x+1)^2', r'2\\sqrt{2}'])\n"
        "    assert [x.correct for x in r] == [True, True], r\n"
        "    assert g.stats()['symbolic'] == 2\n"
    )
    p = subprocess.run([sys.executable, str(script)], cwd=REPO, capture_output=True, text=True, timeout=120,
                       env={**__import__("os").environ, "PYTHONPATH": str(REPO)})
    assert p.returncode == 0, p.stderr
    assert log.read_text() == "ran\n"


def test_default_pool_is_lazy_and_no_larger_than_the_cpus():
    import os
    with Grader(RewardConfig(timeout_s=20)) as g:   # default workers (16)
        res = g.grade_batch([r"\boxed{42}", "The answer is 7.", r"\boxed{\frac{1}{2}}"], ["42", "8", "0.5"])
        assert [r.correct for r in res] == [True, False, True]
        assert g._pool is None   # the fast path settled everything: no process was started
        res = g.grade_batch([r"\boxed{x^2+2x+1}", r"\boxed{\sqrt{8}}", r"\boxed{(1,2)}"],
                            ["(x+1)^2", r"2\sqrt2", "(2,1)"])
        assert [r.correct for r in res] == [True, True, False]
        assert g._pool.size <= len(os.sched_getaffinity(0))
        assert len(g._pool._workers) == 1   # three items do not pay for more interpreters
