"""`engine data simplerl` on the real GSM8K train file, with MATH500 standing in for MATH's release
layout (one JSON file per problem under subject folders)."""

import json
from collections import Counter

import pyarrow.parquet as pq
import pytest

from engine.cli import main
from engine.study.splits import normalise_problem
from tests.study.conftest import SHARED_DATA

GSM8K = SHARED_DATA / "train" / "gsm8k_train.jsonl"
MATH500 = SHARED_DATA / "benchmarks" / "math500.jsonl"
pytestmark = pytest.mark.needs("shared-data")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """MATH500 as a MATH release folder (400 problems) with the other 100 held out as a benchmark,
    plus three broken files; the splits made from it and the GSM8K train file."""
    root = tmp_path_factory.mktemp("simplerl")
    rows = [json.loads(l) for l in MATH500.read_text().splitlines() if l.strip()]
    math_dir = root / "MATH" / "train"
    for i, r in enumerate(rows):
        d = math_dir / r["subject"].lower().replace(" ", "_")
        d.mkdir(parents=True, exist_ok=True)
        # the release layout: problem, level "Level N", type, solution (answer only in \boxed{})
        (d / f"{i}.json").write_text(json.dumps({"problem": r["problem"], "level": f"Level {r['level']}",
                                                 "type": r["subject"], "solution": r["solution"]}))
    (math_dir / "algebra" / "bad1.json").write_text("{not json")
    (math_dir / "algebra" / "bad2.json").write_text(json.dumps({"problem": "x?", "level": "Level ?", "solution": "1"}))
    (math_dir / "algebra" / "bad3.json").write_text(json.dumps({"problem": "y?", "level": "Level 2", "solution": "no box"}))
    bench = root / "benchmarks"
    bench.mkdir()
    held = rows[:100]
    # held out with different spacing and $...$: the normalised text still matches
    (bench / "math500.jsonl").write_text("".join(json.dumps({"problem": "  " + r["problem"].replace(" ", "  ") + " ",
                                                             "answer": r["answer"]}) + "\n" for r in held))
    (bench / "gsm8k.jsonl").write_text((SHARED_DATA / "benchmarks" / "gsm8k.jsonl").read_text())
    out = root / "out"
    code = main(["data", "simplerl", "--gsm8k", str(GSM8K), "--math", str(root / "MATH"), "--out", str(out),
                 "--benchmarks", str(bench), "--val-size", "50", "--size", "8000"])
    assert code == 0
    return {"out": out, "rows": rows, "held": held, "bench": bench}


def _read(path):
    return pq.read_table(str(path)).to_pylist()


def test_splits_have_the_recipe_levels_and_counts(prepared, capsys):
    out = prepared["out"]
    report = json.loads((out / "report.json").read_text())
    splits = {name: _read(out / f"{name}.parquet") for name in ("easy", "medium", "hard", "val")}
    assert {r["level"] for r in splits["easy"]} <= {0, 1}
    assert {r["level"] for r in splits["medium"]} == {1, 2, 3, 4}
    assert {r["level"] for r in splits["hard"]} == {3, 4, 5}
    assert {r["data_source"] for r in splits["easy"]} == {"gsm8k", "math"}
    assert {r["data_source"] for r in splits["medium"] + splits["hard"]} == {"math"}
    # counts reported per split and level, and they match the files
    for name, rows in splits.items():
        assert report["splits"][name]["rows"] == len(rows)
        assert report["splits"][name]["by_level"] == {str(k): v for k, v in sorted(Counter(r["level"] for r in rows).items())}
    # 400 MATH problems + 7473 GSM8K (none repeated) - 50 val = every training-eligible problem once
    assert report["input"] == {"gsm8k": 7473, "math": 500}
    assert report["held_out"]["math500"] == 100
    n_math = len(prepared["rows"]) - 100
    lv = Counter(r["level"] for r in prepared["rows"][100:])
    in_val = Counter(r["level"] for r in splits["val"])
    assert len(splits["medium"]) == sum(lv[l] - in_val[l] for l in (1, 2, 3, 4))
    assert len(splits["hard"]) == sum(lv[l] - in_val[l] for l in (3, 4, 5))
    assert len(splits["easy"]) == 7473 + lv[1] - in_val[0] - in_val[1]
    assert n_math == 400
    # verl-style rows the trainer reads
    r = splits["hard"][0]
    assert r["prompt"][0]["role"] == "user" and r["reward_model"]["ground_truth"] and r["ability"] == "math"
    # bad rows counted with their reasons
    reasons = report["bad_row_reasons"]
    assert report["bad_rows"] == 3
    assert reasons["math: invalid JSON file"] == 1 and reasons["math: no \\boxed{} answer in solution"] == 1
    assert any(k.startswith("math: level not 1-5") for k in reasons)


def test_no_benchmark_problem_in_any_split(prepared):
    out = prepared["out"]
    held = {normalise_problem(r["problem"]) for r in prepared["held"]}
    test = {normalise_problem(json.loads(l)["question"]) for l in (prepared["bench"] / "gsm8k.jsonl").read_text().splitlines()}
    val = {normalise_problem(r["prompt"][0]["content"]) for r in _read(out / "val.parquet")}
    for name in ("easy", "medium", "hard"):
        keys = [normalise_problem(r["prompt"][0]["content"]) for r in _read(out / f"{name}.parquet")]
        assert not (set(keys) & held), name
        assert not (set(keys) & test), name
        assert not (set(keys) & val), f"{name} shares problems with val"
        assert len(keys) == len(set(keys)), f"{name} repeats a problem"


def test_math_answers_come_from_the_boxed_solution(prepared):
    rows = _read(prepared["out"] / "hard.parquet")
    gold = {normalise_problem(r["problem"]): r["answer"] for r in prepared["rows"]}
    # the boxed answer of the solution is MATH500's published answer (for all but spacing variants)
    same = sum(gold[normalise_problem(r["prompt"][0]["content"])].replace(" ", "")
               == r["reward_model"]["ground_truth"].replace(" ", "") for r in rows)
    assert same >= 0.95 * len(rows)


def test_normalise_problem_matches_spacing_and_dollar_variants():
    assert normalise_problem("What is $\\dfrac{1}{2}$ of  10?") == normalise_problem("what is \\frac{1}{2} of 10")
    assert normalise_problem("What is 1+2?") != normalise_problem("What is 1+3?")
