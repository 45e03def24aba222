"""The rule judge on hand-written responses: each behaviour present and absent, and look-alikes;
the LLM judge's answer parser and its cache key (the server test is test_judge_llm.py)."""

import pytest

from engine.study.judge import BEHAVIOURS, RuleJudge, parse_labels, response_key, rule_labels
from tests.study.judge_cases import CASES


@pytest.mark.parametrize("text,present", CASES, ids=[c[0][:40] for c in CASES])
def test_rule_judge_labels_hand_written_responses(text, present):
    labels = rule_labels(text)
    assert set(labels) == set(BEHAVIOURS)
    assert {b for b, v in labels.items() if v} == present


def test_every_behaviour_is_covered_present_and_absent():
    for b in BEHAVIOURS:
        assert any(b in p for _, p in CASES) and any(b not in p for _, p in CASES)


def test_rule_judge_batch_and_untrusted_text():
    texts = ["Let me verify: 2+2=4.", "<script>alert(1)</script> __import__('os')", ""]
    out = RuleJudge().label(texts)
    assert out[0]["verification"] and not any(out[1].values()) and not any(out[2].values())


def test_parse_labels():
    assert parse_labels('{"verification": 1, "backtracking": 0, "subgoal_setting": "yes", "enumeration": false}') == {
        "verification": True, "backtracking": False, "subgoal_setting": True, "enumeration": False}
    # the last complete object wins; prose around it is ignored
    text = 'Sure. {"verification": 0} and finally {"verification": 0, "backtracking": 1, "subgoal_setting": 0, "enumeration": 0}'
    assert parse_labels(text)["backtracking"] is True
    for bad in ("", "no json here", '{"verification": 1}', '{"verification": "maybe", "backtracking": 0, '
                '"subgoal_setting": 0, "enumeration": 0}', "{broken"):
        assert parse_labels(bad) is None


def test_cache_key_depends_on_model_and_text():
    assert response_key("m", "a") == response_key("m", "a")
    assert response_key("m", "a") != response_key("m", "b") != response_key("n", "a")
