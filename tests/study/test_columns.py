"""`data.answer_key` / `data.prompt_key`: plain question/answer JSONL as training data, and the
column check at `engine plan` time (before any model loads)."""

import json

import pytest

from compiler.cli import plan_command
from compiler.columns import answer_value, column_problems, final_answer, prompt_value
from tests.study.conftest import ROOT, SHARED_DATA

GSM8K = SHARED_DATA / "train" / "gsm8k_train.jsonl"


def test_final_answer_of_published_layouts():
    assert final_answer("She sold 48/2 = 24 clips.\n#### 72") == "72"
    assert final_answer("... so the total is\n#### 1,000") == "1000"
    assert final_answer("Thus $x = \\boxed{\\frac{1}{2}}$.") == "\\frac{1}{2}"
    assert final_answer(" 5 ") == "5"
    assert final_answer("") is None and final_answer(None) is None


def test_prompt_and_answer_columns():
    row = {"question": "Q?", "answer": "so\n#### 7", "meta": {"gold": "8"}}
    assert prompt_value(row) == "Q?"                   # default prompt_key falls back to question
    assert prompt_value(row, "prompt") == "Q?"
    assert prompt_value({"problem": "P?"}) == "P?"
    assert prompt_value(row, "query") is None           # an explicit key does not fall back
    assert answer_value(row, "answer") == "7"
    assert answer_value(row, "meta.gold") == "8"
    assert answer_value(row) is None                    # no reward_model.ground_truth
    assert answer_value({"reward_model": {"ground_truth": "3"}}) == "3"


@pytest.mark.skipif(not GSM8K.exists(), reason="../shared/data not found")
def test_plan_reports_wrong_columns_before_any_model_loads(capsys):
    spec = str(ROOT / "specs" / "quickstart.yaml")
    assert plan_command([spec, f"data.train={GSM8K}"]) == 2
    err = capsys.readouterr().err
    assert "no answer at 'reward_model.ground_truth'" in err and "data.answer_key=answer" in err
    assert plan_command([spec, f"data.train={GSM8K}", "data.answer_key=answer", "data.prompt_key=query"]) == 2
    err = capsys.readouterr().err
    assert "no column 'query'" in err and "data.prompt_key=question" in err
    assert plan_command([spec, f"data.train={GSM8K}", "data.answer_key=answer"]) == 0


def test_column_problems_of_parquet(tmp_path):
    from engine.data.prompts import write_parquet

    p = tmp_path / "d.parquet"
    write_parquet([{"prompt": "Q", "reward_model": {"ground_truth": "1"}}], p)
    assert column_problems(p) == []
    assert [f for f, _, _ in column_problems(p, answer_key="answer")] == ["answer_key"]
    empty = tmp_path / "e.jsonl"
    empty.write_text("")
    assert [f for f, _, _ in column_problems(empty)] == ["file"]


@pytest.mark.slow
@pytest.mark.skipif(not GSM8K.exists(), reason="../shared/data not found")
def test_engine_run_trains_on_the_plain_gsm8k_file(tmp_path, engine_cache, capsys):
    """`data.train=<gsm8k jsonl> data.answer_key=answer`: the rows are read through the column
    mapping (the builtin character tokenizer of the tiny model fits only the shortest questions in
    its 128-token context; the rest are counted as too long, not lost silently)."""
    from engine.cli import main
    from tests.runtime.conftest import write_spec

    spec = write_spec(tmp_path, steps=1, every=1, eval_every=0)
    run = tmp_path / "run"
    assert main(["run", str(spec), f"data.train={GSM8K}", "data.answer_key=answer", "data.val=null",
                 "data.max_prompt_length=96", "--run-dir", str(run), "--quiet"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    rep = summary["data_train"]
    assert rep["rows"] == 7473 and rep["bad_rows"] == 0
    assert rep["kept"] + rep["too_long"] == 7473 and rep["kept"] > 0
    assert summary["steps_done"] == 1
    from engine.core.rollouts import read_rollouts, step_files

    rows = read_rollouts(step_files(run)[1])
    gold = {json.loads(l)["question"]: json.loads(l)["answer"].rsplit("####", 1)[1].strip().replace(",", "")
            for l in GSM8K.read_text().splitlines()}
    for r in rows:  # the ground truths are GSM8K's final answers, matched to their questions
        question = r["prompt"].split("Question:\n", 1)[1].split("\nAnswer:", 1)[0]
        assert r["ground_truth"] == gold[question]
