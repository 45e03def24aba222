"""Time bounds of the reward: power towers refused by size, the in-process mode (``workers=0``)
bounded by ``timeout_s``, and timeouts cached like any other verdict."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.reward import Grader, RewardConfig
from engine.reward.parser import TooBig, parse_answer

ROOT = Path(__file__).resolve().parents[2]

#: Answers the issue found unbounded in-process (each took more than 150 s on 1155b1c).
TOWERS = ["e^{e^{e^{100}}}", "\\lfloor e^{e^{e^3}}\\rfloor", "\\exp(\\exp(\\exp(100)))",
          "\\cosh(e^{e^{5}})", "2^{\\pi \\cdot 10^{6}}"]


@pytest.mark.parametrize("answer", TOWERS)
def test_power_towers_are_refused_by_size(answer):
    with pytest.raises(TooBig):
        parse_answer(answer)


@pytest.mark.parametrize("answer", ["e^{100}", "\\lfloor e^{e^{2}}\\rfloor", "2^{\\pi}", "\\exp(3)"])
def test_ordinary_powers_still_parse(answer):
    parse_answer(answer)


def test_in_process_grading_of_towers_returns(tmp_path):
    """The quickstart's setting (workers=0) on the issue's answers, in a child process: a hang shows
    as the child's timeout."""
    code = ("from engine.reward import Grader, RewardConfig\n"
            f"answers = {TOWERS!r}\n"
            "with Grader(RewardConfig(workers=0, timeout_s=5)) as g:\n"
            "    out = g.grade_batch(['The answer is \\\\boxed{' + a + '}.' for a in answers], ['5'] * len(answers))\n"
            "print([r.status for r in out], [r.correct for r in out])\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "True" not in proc.stdout.split("]")[1]  # none of them is 5


def _never_ends(pred: str, gold: str) -> bool:
    while True:  # a check that never finishes, in Python (as sympy's runaway simplifications are)
        pass


@pytest.mark.timeout(120)
def test_in_process_mode_is_bounded_by_timeout_s_and_caches_the_timeout(monkeypatch):
    import engine.reward.grader as G

    calls = []

    def slow(pred, gold):
        calls.append(pred)
        return _never_ends(pred, gold)

    monkeypatch.setattr(G, "is_equivalent", slow)
    with Grader(RewardConfig(workers=0, timeout_s=0.5)) as g:
        out = g.grade_batch(["\\boxed{x^2+y}", "\\boxed{3}"], ["y+x^2+1", "3"])
        assert [r.status for r in out] == ["timeout", "ok"] and [r.correct for r in out] == [False, True]
        again = g.grade_batch(["so \\boxed{x^2+y}"], ["y+x^2+1"])
        assert again[0].status == "timeout" and len(calls) == 1  # cached: not tried a second time
        assert g.stats()["timeouts"] == 2 and g.stats()["cached"] == 1
        time.sleep(1.0)  # a timeout never fires later, outside the call it bounded
        assert g.grade_batch(["\\boxed{4}"], ["4"])[0].correct


@pytest.mark.timeout(120)
def test_pool_timeouts_are_cached():
    """Through the worker pool a timeout costs ``timeout_s`` once per distinct answer, not per rollout."""
    import engine.reward.pool as P

    with Grader(RewardConfig(workers=1, timeout_s=1.0)) as g:
        g._pool = P.VerifierPool(1, 1.0, verify_fn="tests.reward.test_reward_bounds:_never_ends")
        first = g.grade_batch(["\\boxed{x^2+y}"] * 3, ["y+x^2+1"] * 3)
        killed = g._pool.killed
        second = g.grade_batch(["\\boxed{x^2+y}"] * 8, ["y+x^2+1"] * 8)
    assert [r.status for r in first + second] == ["timeout"] * 11
    assert killed == 1 and g.stats()["cached"] == 8


def test_call_with_deadline_returns_results_and_raises_errors():
    from engine.reward.deadline import call_with_deadline

    assert call_with_deadline(lambda a, b: a + b, (2, 3), 5.0) == (True, 5)
    with pytest.raises(ZeroDivisionError):
        call_with_deadline(lambda: 1 / 0, (), 5.0)
    finished, _ = call_with_deadline(_never_ends, ("a", "b"), 0.2)
    assert not finished
