import sys
from collections import Counter
from pathlib import Path

import pytest

from engine.reward import Grader, RewardConfig, is_equivalent, quick_verdict

sys.path.insert(0, str(Path(__file__).parent / "cases"))
from derive import derived_cases, handwritten_cases  # noqa: E402

REQUIRED_TYPES = {"integer", "thousands", "fraction", "decimal", "percent", "latex_noise", "units",
                  "symbolic", "complex", "equation", "inequality", "set", "tuple", "interval",
                  "matrix", "choice", "text", "extraction"}


@pytest.mark.parametrize("pred,gold,expected", [
    (r"\frac{1}{2}", "0.5", True),
    (r"\left( 3, \frac{\pi}{2} \right)", r"(3,\frac{\pi}{2})", True),
    ("x=3", "3", True),
    (r"\{1,2\}", r"\{2,1\}", True),
    ("(1,2)", "(2,1)", False),
    ("[0,1)", "[0,1]", False),
    (r"\begin{pmatrix}1&2\\3&4\end{pmatrix}", r"\begin{pmatrix} 1 & 2 \\ 3 & 4 \end{pmatrix}", True),
    (r"\text{(C)}", "C", True),
    ("x^2+2x+1", "(x+1)^2", True),
    ("x^2-1", "(x+1)^2", False),
    ("50", r"50\%", True),
    ("1,000", "1000", True),
    (r"10\text{ inches}", "10", True),
    ("0.54", "0.5", False),
])
def test_examples(pred, gold, expected):
    assert is_equivalent(pred, gold) is expected


def test_quick_verdict_settles_typical_answers_without_sympy():
    assert quick_verdict("42", "42") is True
    assert quick_verdict("41", "42") is False
    assert quick_verdict(r"\dfrac{1}{2}", "0.5") is True
    assert quick_verdict("x = 7", "7") is True
    assert quick_verdict("(B)", "C") is False
    assert quick_verdict(r"\sqrt{2}", r"\frac{2}{\sqrt2}") is None  # needs the symbolic stage


def test_labelled_set_covers_every_type():
    cases = handwritten_cases()
    types = Counter(c["type"] for c in cases)
    assert REQUIRED_TYPES <= set(types), REQUIRED_TYPES - set(types)
    for t in REQUIRED_TYPES:  # positives and negatives for each type
        assert any(c["expected"] for c in cases if c["type"] == t), t
        assert any(not c["expected"] for c in cases if c["type"] == t), t


def _grade_all(cases):
    with Grader(RewardConfig(workers=0)) as g:
        res = g.grade_batch([c["response"] for c in cases], [c["ground_truth"] for c in cases])
    fp = [(c, r) for c, r in zip(cases, res) if r.correct and not c["expected"]]
    fn = [(c, r) for c, r in zip(cases, res) if not r.correct and c["expected"]]
    return fp, fn


def _describe(pairs):
    return "\n".join(f"{c['source']}: extracted={r.extracted!r} gold={c['ground_truth']!r}" for c, r in pairs[:20])


def test_handwritten_set_no_false_positives_or_negatives():
    cases = handwritten_cases()
    assert len(cases) >= 300
    fp, fn = _grade_all(cases)
    assert not fp, "false positives:\n" + _describe(fp)
    assert not fn, "false negatives:\n" + _describe(fn)


@pytest.mark.needs("shared-data")
def test_full_labelled_set():
    cases = handwritten_cases() + derived_cases()
    assert len(cases) >= 500
    adversarial = [c for c in cases if c["adversarial"]]
    assert len(adversarial) >= 200
    fp, fn = _grade_all(cases)
    adv_fp = [p for p in fp if p[0]["adversarial"]]
    print(f"\nlabelled set: {len(cases)} cases, FP={len(fp)} (adversarial {len(adv_fp)}), FN={len(fn)}")
    assert not adv_fp, "adversarial false positives:\n" + _describe(adv_fp)
    assert not fp, "false positives:\n" + _describe(fp)
    assert not fn, "false negatives:\n" + _describe(fn)


def test_relation_operator_is_the_top_level_one():
    from engine.reward.parser import parse_answer

    # a relation inside an environment is not the answer's relation
    node = parse_answer(r"\begin{pmatrix} a < 1 \end{pmatrix} = x")
    assert (node.kind, node.open) == ("rel", "=")
