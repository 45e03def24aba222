"""The aha-moment change-point test on synthetic behaviour series with a known change point."""

import numpy as np
import pytest

from engine.study.aha import detect_rise


def _series(before: float, after: float, change: int, steps: int, n: int = 64, seed: int = 0) -> np.ndarray:
    """Per-step shares of ``n`` responses with the behaviour: rate ``before`` for steps 1..change-1,
    ``after`` from step ``change`` on."""
    rng = np.random.default_rng(seed)
    p = np.where(np.arange(1, steps + 1) < change, before, after)
    return rng.binomial(n, p) / n


@pytest.mark.parametrize("seed", range(5))
def test_finds_the_known_change_point(seed):
    x = _series(0.05, 0.25, change=26, steps=40, seed=seed)
    cp = detect_rise(x)
    assert cp.found and abs(cp.step - 26) <= 1, cp.reason
    assert cp.p_value <= 0.01 and cp.confidence >= 0.99
    assert cp.before == pytest.approx(0.05, abs=0.03) and cp.after == pytest.approx(0.25, abs=0.04)


def test_steps_are_reported_in_the_runs_numbering():
    x = _series(0.0, 0.3, change=11, steps=20, seed=1)
    cp = detect_rise(x, steps=list(range(10, 210, 10)))  # logged every 10 steps
    assert cp.found and cp.step == 110


@pytest.mark.parametrize("seed", range(10))
def test_no_false_alarm_on_a_flat_series(seed):
    cp = detect_rise(_series(0.1, 0.1, change=1, steps=40, seed=100 + seed))
    assert not cp.found and cp.reason.startswith("not found")


def test_a_fall_is_not_an_aha_moment():
    cp = detect_rise(_series(0.3, 0.05, change=20, steps=40, seed=3))
    assert not cp.found


def test_a_tiny_significant_rise_is_below_min_rise():
    x = np.r_[np.full(20, 0.10), np.full(20, 0.12)] + np.random.default_rng(0).normal(0, 0.002, 40)
    cp = detect_rise(x, min_rise=0.05)
    assert not cp.found and cp.p_value <= 0.01 and "rise" in cp.reason


def test_short_and_constant_series():
    assert not detect_rise([0.1, 0.5]).found
    assert detect_rise([0.2] * 10).reason == "not found: the series is constant"


def test_seeded():
    x = _series(0.1, 0.2, change=15, steps=30, seed=7)
    assert detect_rise(x, seed=1).p_value == detect_rise(x, seed=1).p_value


def test_analysis_orders_steps_numerically_and_finds_a_rise():
    """Per-step ratios come out in step order (10 after 9, not after 1), so the change-point test
    sees the series as it happened."""
    from engine.study.analyze import length_rise, summarise

    rows, labels = [], []
    for step in range(1, 21):
        for i in range(4):
            long = step >= 11
            rows.append({"step": step, "length": 20 if long else 8, "correct": True})
            labels.append({"verification": long and i < 2, "backtracking": False, "subgoal_setting": False,
                           "enumeration": False})
    per = summarise(rows, labels)["per_step"]
    assert [p["step"] for p in per] == list(range(1, 21))
    rise = length_rise(per)
    assert rise["found"] and rise["step"] == 11
    from engine.study.analyze import aha_moments

    rows = [{**r, "response": "x", "prompt": "p", "group": 0, "sample": 0} for r in rows]
    aha = aha_moments(rows, labels, per)
    assert aha["verification"]["found"] and aha["verification"]["step"] == 11
    assert aha["verification"]["examples_after"][0]["labels"]["verification"] is True
    assert not aha["backtracking"]["found"]
