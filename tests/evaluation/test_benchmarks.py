"""The six benchmark files of ../shared/data read into verl-style rows with the right gold answers."""

import json
from pathlib import Path

import pytest

from engine.data.benchmarks import benchmark_rows, gold_answer
from engine.data.prompts import build_prompt_set, ground_truth_of, question_of
from schemas.run import BENCHMARKS

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "benchmarks"
SIZES = {"gsm8k": 1319, "math500": 500, "minerva_math": 272, "olympiadbench": 675, "aime24": 30, "amc23": 40}


@pytest.mark.parametrize("name", BENCHMARKS)
def test_every_row_of_the_real_benchmarks_has_a_question_and_an_answer(name):
    rows = benchmark_rows(name, DATA)
    assert len(rows) == SIZES[name]  # the sizes RECIPE.md gives
    for row in rows:
        assert question_of(row["prompt"]) and ground_truth_of(row), row
        assert row["data_source"] == name


def test_gold_answers_follow_each_layout():
    first = {name: ground_truth_of(benchmark_rows(name, DATA)[0]) for name in BENCHMARKS}
    assert first["gsm8k"] == "18"            # "... #### 18"
    assert first["amc23"] == "27"            # 27.0 in the file
    assert first["aime24"] == "204"
    assert first["minerva_math"] == "1.6"    # last \boxed{} of the solution
    assert first["math500"] == r"\left( 3, \frac{\pi}{2} \right)"
    assert first["olympiadbench"] == "2"
    assert gold_answer("gsm8k", {"answer": "so 1,200 in all\n#### 1,200"}) == "1200"
    assert gold_answer("olympiadbench", {"final_answer": ["$69$,$84$"]}) == "69,84"
    assert gold_answer("olympiadbench", {"final_answer": ["$x=1$", "$x=2$"]}) == "x=1, x=2"
    assert gold_answer("minerva_math", {"solution": "no box here"}) is None
    assert gold_answer("gsm8k", {"answer": "no marker"}) is None


def test_bad_lines_are_counted_not_dropped(tmp_path):
    from engine.quickstart.tokenizer import build_tokenizer

    tokenizer = build_tokenizer()
    lines = [json.dumps({"question": "Compute 1+2.", "answer": "#### 3"}), "{not json",
             json.dumps({"question": "Compute 2+2.", "answer": "four"}), json.dumps(["a list"]),
             json.dumps({"answer": "#### 5"})]
    (tmp_path / "gsm8k.jsonl").write_text("\n".join(lines) + "\n")
    rows = benchmark_rows("gsm8k", tmp_path)
    ps = build_prompt_set(rows, tokenizer, None, 64)
    assert ps.report["rows"] == 5 and ps.report["kept"] == 1 and ps.report["bad_rows"] == 4
    assert ps.ground_truths == ["3"]


def test_missing_file_and_unknown_benchmark(tmp_path):
    with pytest.raises(FileNotFoundError, match="gsm8k.jsonl"):
        benchmark_rows("gsm8k", tmp_path)
    with pytest.raises(ValueError, match="unknown benchmark"):
        benchmark_rows("mmlu", tmp_path)
