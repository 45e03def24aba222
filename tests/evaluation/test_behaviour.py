"""Reflection keywords and loop detection on hand-made responses."""

import pytest

from engine.evaluation.behaviour import behaviour_ratios, ends_in_loop, has_reflection_keyword


@pytest.mark.parametrize("text", ["Wait, that is wrong.", "let me RECHECK", "so, however, x=2", "Let's try\nagain.",
                                  "Alternatively we factor", "I retry with n=3", "rethink the sign"])
def test_reflection_keywords_are_found(text):
    assert has_reflection_keyword(text)


@pytest.mark.parametrize("text", ["awaiting results", "the waiter", "howeverx", "x = 2, so \\boxed{2}", "tryagain", ""])
def test_lookalikes_are_not_reflection(text):
    assert not has_reflection_keyword(text)


def test_loops_need_three_copies_and_enough_tokens():
    unit = [5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]         # 11 tokens
    assert ends_in_loop([1, 2, 3] + unit * 3)               # 33 tokens of one 11-token unit
    assert not ends_in_loop([1, 2, 3] + unit * 2)           # two copies are not a loop
    assert ends_in_loop([4] * 40) and not ends_in_loop([4] * 31)  # a 1-token loop must reach 32 tokens
    assert not ends_in_loop(list(range(200)))
    assert not ends_in_loop(unit * 5 + [99])                # the loop must be at the end
    assert ends_in_loop(list(range(60)) * 3)                # a 60-token unit, 180 tokens
    assert not ends_in_loop(list(range(101)) * 3)           # longer than max_period
    assert not ends_in_loop([])


def test_behaviour_ratios():
    texts = ["wait, no", "fine", "fine", "however"]
    ids = [[1] * 40, [2, 3], [2, 3], [4]]
    assert behaviour_ratios(texts, ids) == {"reflection_ratio": 0.5, "repeat_ratio": 0.25}
