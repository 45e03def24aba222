"""pass@k and the per-benchmark summary against hand-worked numbers."""

import math

import pytest

from engine.evaluation.metrics import ks_for, pass_at_k, summarize


@pytest.mark.parametrize("n,c,k,expected", [
    (4, 1, 1, 0.25),            # pass@1 is the share correct
    (4, 1, 2, 0.5),             # 1 - C(3,2)/C(4,2) = 1 - 3/6
    (5, 2, 2, 0.7),             # 1 - C(3,2)/C(5,2) = 1 - 3/10
    (8, 0, 4, 0.0),
    (8, 5, 4, 1.0),             # fewer than k wrong samples: every k-subset has a right one
    (10, 3, 5, 1 - math.comb(7, 5) / math.comb(10, 5)),
])
def test_pass_at_k_hand_worked(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_large_n_does_not_overflow():
    # 1 - C(1000, 128) / C(1024, 128): the direct binomials overflow a float; the product does not
    assert pass_at_k(1024, 24, 128) == pytest.approx(1 - math.comb(1000, 128) / math.comb(1024, 128), rel=1e-9)


@pytest.mark.parametrize("n,c,k", [(4, 1, 0), (4, 1, 5), (4, 5, 2), (0, 0, 1)])
def test_pass_at_k_rejects_impossible_arguments(n, c, k):
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


def test_summarize_groups_samples_per_problem():
    # two problems x 4 samples: 1/4 and 3/4 right
    verdicts = [True, False, False, False, True, True, False, True]
    out = summarize(verdicts, 4)
    assert out["accuracy"] == pytest.approx(0.5)
    assert out["pass@2"] == pytest.approx((0.5 + 1.0) / 2)        # 1 - C(3,2)/C(4,2); 1 - C(1,2)/C(4,2) = 1
    assert out["pass@4"] == pytest.approx(1.0)
    assert set(out) == {"accuracy", "pass@2", "pass@4"}
    assert ks_for(32) == [1, 2, 4, 8, 16, 32] and ks_for(6) == [1, 2, 4]


def test_summarize_single_sample_is_plain_accuracy():
    assert summarize([True, False, True], 1) == {"accuracy": pytest.approx(2 / 3)}
    with pytest.raises(ValueError):
        summarize([True, False, True], 2)
