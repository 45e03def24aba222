"""The kinds of issue 9: one small rule each, and the kind corpus as a regression set.

The corpus (``cases/``) holds other graders' test-suite facts (``suites.jsonl``, each with its
origin), hand-written cases by kind with a reward-hacking battery (``kinds.tsv``), and cases
derived at run time from the MATH500 / OlympiadBench golds in ``../shared/data``.
"""

import sys
from collections import Counter
from pathlib import Path

import pytest

from engine.reward import Grader, RewardConfig, extract_answer, is_equivalent
from engine.reward.extract import extract_answer_info, gold_answer

sys.path.insert(0, str(Path(__file__).parent / "cases"))
from derive import benchmark_kind_cases, kind_cases, suite_cases  # noqa: E402

ISSUE_KINDS = {"prose", "choice", "chain", "multi_box", "labelled", "list_sep", "double_escape",
               "percent", "ineq_interval", "mixed_number", "rounding", "hack", "number_format",
               "operators", "latex_noise"}

#: Suite facts this grader answers differently, on purpose or as a known limit (origin, why).
KNOWN_SUITE_MISSES = {
    "math-verify@5d148cf:test_all.py::test_latex_notation_math": "a long solution gold with boxes around a non-answer",
    "math-verify@5d148cf:test_all.py::test_relations_math": r"\zzz is not a command we parse",
    "math-verify@5d148cf:test_all.py::test_matrix_extraction": "matrix sums and products are not evaluated",
    "math-verify@5d148cf:test_numina_cases.py::test_numina_cases": "|z| inside a double inequality",
    "lighteval@3fd15266:test_extractive_match.py::test_extraction_abc": "a gold written as prose with a letter",
    "lighteval@3fd15266:test_extractive_match.py::test_math_numina_cases": "flat list against grouped pairs",
    "hendrycks-math@5f3bf91:modeling/math_equivalence_test.py": "answer lists are unordered here (deliberate)",
}


def _grade(cases):
    with Grader(RewardConfig(workers=0)) as g:
        return g.grade_batch([c["response"] for c in cases], [c["ground_truth"] for c in cases])


@pytest.fixture(scope="module")
def graded_kinds():
    cases = kind_cases()
    return cases, _grade(cases)


def test_every_issue_kind_has_positives_and_look_alikes():
    cases = kind_cases()
    kinds = Counter(c["kind"] for c in cases)
    assert ISSUE_KINDS <= set(kinds), ISSUE_KINDS - set(kinds)
    for k in ISSUE_KINDS:
        assert any(c["expected"] for c in cases if c["kind"] == k), k
        assert any(not c["expected"] for c in cases if c["kind"] == k), k
    assert sum(c["adversarial"] for c in cases) >= 60
    assert all(c["origin"].startswith("kinds.tsv:") for c in cases)


def test_hand_written_kinds_all_graded_as_labelled(graded_kinds):
    cases, res = graded_kinds
    wrong = [(c["origin"], c["ground_truth"], r.extracted, c["expected"])
             for c, r in zip(cases, res) if r.correct != c["expected"]]
    assert not wrong, wrong


def test_suite_facts_have_origins_and_exclusions_have_reasons():
    all_facts = suite_cases(include_excluded=True)
    kept = suite_cases()
    assert len(kept) >= 300
    assert {c["origin"].split("@")[0] for c in kept} >= {"math-verify", "lighteval", "hendrycks-math",
                                                          "NeMo-Skills"}
    assert len(all_facts) - len(kept) <= 40


def test_suite_facts_regressions():
    cases = suite_cases()
    res = _grade(cases)
    wrong = [c for c, r in zip(cases, res) if r.correct != c["expected"]]
    fp = [c for c, r in zip(cases, res) if r.correct and not c["expected"]]
    assert len(wrong) <= 12, [(c["origin"], c["ground_truth"]) for c in wrong]
    unexpected = [(c["origin"], c["ground_truth"]) for c in wrong if c["origin"] not in KNOWN_SUITE_MISSES]
    assert not unexpected
    # the only accepted false positives are the deliberate unordered-list convention
    assert all(c["origin"].startswith("hendrycks-math") for c in fp)


@pytest.mark.needs("shared-data")
def test_benchmark_gold_kinds_no_false_positives():
    cases = benchmark_kind_cases()
    assert {"mixed_number", "ineq_interval", "text", "multi_box", "labelled", "rounding"} <= \
        {c["kind"] for c in cases}
    res = _grade(cases)
    fp = [(c["origin"], r.extracted) for c, r in zip(cases, res) if r.correct and not c["expected"]]
    fn = [(c["origin"], r.extracted) for c, r in zip(cases, res) if not r.correct and c["expected"]]
    assert not fp and not fn, (fp, fn)


# ------------------------------------------------------------------------------ one rule each

@pytest.mark.parametrize("response,expected", [
    ("Therefore $x \\geq 5$ is the solution.", "x \\geq 5"),           # last math span
    ("Final Answer: The largest $n$ is 34.", "34"),                   # value of a final statement
    ("how many $? just about 1$", "1"),
    ("We need $2+3=5$ steps, so it takes 5 steps.", "5"),            # a later number in prose
    ("AZYUK2A", None),                                                 # digits inside a word
    ("The ratio works out to \\frac{1+\\sqrt{5}}{2}", None),          # denominator of an unboxed fraction
    ("__import__('os').system('ls') or 0", None),                     # injection text
    ("Answer $ \n 9 \n $", None),                                     # an inline span cannot cross lines
    ("so it is 1,000.99m\u00b2", "1000.99"),                          # a unit after the number
    ("-\\frac{10}{9}", "-\\frac{10}{9}"),                             # the whole response is the answer
])
def test_extraction_without_a_box(response, expected):
    assert extract_answer(response) == expected


def test_boxes_joined_by_separators_only():
    assert extract_answer(r"So $x=\boxed{-1}$ or $x=\boxed{4}$.") == "-1, 4"
    assert extract_answer(r"\boxed{(2, 2)} \quad \text{and} \quad \boxed{(6, 2)}") == "(2, 2), (6, 2)"
    assert extract_answer(r"\boxed{1} no no no no no \boxed{2}") == "2"
    assert extract_answer(r"First \boxed{2}. Wait, that is wrong. So \boxed{3}.") == "3"
    assert extract_answer(r"<|im_start|>assistant reasoning \boxed{2}") == "2"


def test_double_escaped_output():
    assert extract_answer(r"so the answer is \\boxed{\\frac{1}{2}}") == r"\frac{1}{2}"
    assert is_equivalent(r"\\frac{1}{2}", "0.5")
    # a matrix row separator before a command is not an escape
    assert is_equivalent(r"\begin{pmatrix}1\\\end{pmatrix}", r"\begin{pmatrix}1\end{pmatrix}")


def test_choice_letters_in_prose():
    def pick(resp, gold):
        with Grader(RewardConfig(workers=0)) as g:
            return g.grade_batch([resp], [gold])[0].correct
    assert pick("The answer is (B).", "B")
    assert pick("The correct option is B) 42.", "B")
    assert pick("Let's think. It's not A, therefore I think it's B", "B")
    assert pick("C", "(C) Cecile")
    assert not pick("The answer is A or B.", "A")
    assert not pick("It is not (A), the answer is (B).", "A")


@pytest.mark.parametrize("pred,gold,expected", [
    ("x = 5+5+1 = 11", "11", True),                   # the last side of a chain
    ("x = 11 = 12", "11", False),
    (r"\frac{\sqrt3}{3}\approx0.577", r"\frac{\sqrt{3}}{3}", True),
    (r"\frac{\sqrt3}{3}\approx0.577", "0.577", True),
    (r"7 \approx 8", "8", False),                     # an approximation must be close to its exact side
    ("(p,q)=(3,2)", "(3,2)", True),                   # labels
    (r"\angle APC = 74^\circ", "74", True),
    ("2=x", "2", True),
    ("x+1=3", "3", False),                            # an equation is not a label
    ("11a+c", "7 = 11a+c", False),                    # nor is a gold equation with a constant side
    ("1; 2; 3", "1, 2, 3", True),                     # separators
    ("1 or 2", "2, 1", True),
    ("32, 349", "32349", False),                      # a list is not a grouped number
    (r"32,\! 349", "32349", True),
    ("1, 1, 2", "1, 2, 2", False),                    # multiplicity counts when the gold repeats
    ("(3,1), (3,1), (1,3)", "(3,1), (1,3)", True),    # otherwise a repeat changes nothing
    ("33.5 percent", r"33.5\%", True),
    (r"9\%", "0.9", False),
    ("0<f(x)<1", "(0,1)", True),                      # inequalities as intervals
    ("-x > -1", "x<1", True),
    (r"x \ge 2", r"[2,\infty)", True),
    ("x > 2", r"[2,\infty)", False),
    (r"918\frac{1}{2}", "918.5", True),               # mixed numbers
    ("459", r"918\frac{1}{2}", False),
    (r"\frac{11}{20}", "0.6", False),                 # rounding: only for non-terminating values
    (r"\frac{1}{3}", "0.333", True),
    ("0.333", r"\frac{1}{3}", True),
    ("0.3", r"\frac{1}{3}", False),
    ("3,5", "3.5", True),                             # decimal comma against a decimal
    ("-3", "-3,0", False),                            # ... but a gold "-3,0" is a list
    ("1 000", "1000", True),
    (r"\sum_{k=1}^{3} k", "6", True),                 # sums and Python powers
    (r"\sum_{i=1}^{n} i", r"\frac{n(n+1)}{2}", True),
    ("2**3", "8", True),
    ("185\\", "185", True),                           # a trailing stray backslash
    (r"17\text{ any text}", "17", True),              # words after a number are its unit
    (r"5 \text{ (no wait, 6)}", "5", False),
])
def test_equivalence_rules(pred, gold, expected):
    assert is_equivalent(pred, gold) is expected


def test_gold_written_as_a_solution():
    assert gold_answer(r"Thus the area is $\boxed{12}$ square units.") == "12"
    assert gold_answer(r"\boxed{1} and \boxed{2}") == "1, 2"
    assert gold_answer("42") == "42"
    ans, boxed = extract_answer_info(r"\boxed{255} ... Final Answer: The final answer is $10,455$.")
    assert (ans, boxed) == ("10,455", False)   # a later, different final statement wins
