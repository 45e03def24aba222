from engine.reward import extract_answer
from engine.reward.extract import extract_answer_info, last_boxed


def test_last_boxed_brace_matching():
    assert last_boxed(r"a \boxed{\frac{1}{2}} b") == r"\frac{1}{2}"
    assert last_boxed(r"\boxed{1} then \boxed{\{1,2\}}") == r"\{1,2\}"
    assert last_boxed(r"\fbox{12}") == "12"
    assert last_boxed(r"\boxed 8 more") == "8"
    assert last_boxed("no box") is None


def test_unclosed_last_box_falls_back_to_previous():
    assert extract_answer(r"\boxed{3} and later \boxed{4") == "3"


def test_nested_and_empty_boxes():
    assert extract_answer(r"\boxed{\boxed{7}}") == "7"
    assert extract_answer_info(r"\boxed{}") == (None, False)


def test_phrase_and_number_fallbacks():
    assert extract_answer_info("The answer is 42.") == ("42", False)
    assert extract_answer("So the final answer is: $\\frac{3}{4}$.") == r"\frac{3}{4}"
    assert extract_answer("The answer is 3.5.") == "3.5"
    assert extract_answer("the answer is $5$, since 2+3=5.") == "5"
    assert extract_answer("The answer is $$\\frac{1}{2}$$ here") == "\\frac{1}{2}"
    assert extract_answer("we get 8 apples, then 12 more makes 20.") == "20"
    assert extract_answer("She pays $1,250 in total") == "1250"
    assert extract_answer("no digits here") is None


def test_box_wins_over_phrase():
    assert extract_answer_info(r"The answer is 12 but \boxed{13}") == ("13", True)


def test_end_tokens_and_assistant_marker():
    resp = r"<|im_start|>user Q: \boxed{1}<|im_start|>assistant reasoning \boxed{2}<|im_end|> junk \boxed{3}"
    assert extract_answer(resp, end_tokens=["<|im_end|>"]) == "2"
    ans, boxed = extract_answer_info(r"user says \boxed{9}<|im_start|>assistant The answer is 4",
                                     assistant_marker="<|im_start|>assistant")
    assert (ans, boxed) == ("4", False)


def test_huge_response_is_bounded():
    resp = "x" * 200_000 + r" \boxed{5}"
    assert extract_answer(resp) == "5"
    assert extract_answer("{" * 100_000) is None
