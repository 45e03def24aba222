"""Prompt data on real parquet / JSONL files: row shapes, selection, templates, counting, batching."""

import json

import pytest

from engine.data.prompts import (COMPLEX_TEMPLATE, SIMPLE_TEMPLATE, apply_template, batch_indices,
                                 build_prompt_set, read_rows, template_text, write_parquet)
from engine.data.synthetic import generate_rows, sample_problem

ROWS = [
    {"prompt": [{"role": "user", "content": "What is 1+1?"}], "reward_model": {"ground_truth": "2"},
     "data_source": "a", "level": "Level 1"},
    {"prompt": "What is 2+2?", "reward_model": {"ground_truth": "4"}, "data_source": "b", "level": 3},
    {"prompt": "No answer here", "reward_model": {"ground_truth": None}, "data_source": "c", "level": 1},
    {"prompt": [], "reward_model": {"ground_truth": "1"}, "data_source": "d", "level": 1},
    {"prompt": "x" * 500, "reward_model": {"ground_truth": "1"}, "data_source": "e", "level": 1},
]


def test_parquet_chat_rows_and_jsonl(tmp_path, tokenizer):
    chat = [{"prompt": [{"role": "system", "content": "s"}, {"role": "user", "content": f"What is {i}+1?"}],
             "reward_model": {"ground_truth": str(i + 1), "style": "rule"}, "data_source": "x", "level": i % 3}
            for i in range(6)]
    write_parquet(chat, tmp_path / "d.parquet")
    ps = build_prompt_set(read_rows(tmp_path / "d.parquet"), tokenizer, SIMPLE_TEMPLATE, 64, levels=[1, 2])
    assert ps.ground_truths == ["2", "3", "5", "6"] and ps.report["outside_levels"] == 2
    assert "What is 1+1?" in ps.texts[0] and "s\n" not in ps.texts[0]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in ROWS) + "\n{broken\n")
    js_rows = read_rows(tmp_path / "d.jsonl")
    assert len(js_rows) == 6 and "__error__" in js_rows[-1]


def test_bad_rows_levels_and_too_long_are_counted_not_dropped_silently(tmp_path, tokenizer):
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in ROWS) + "\n{broken\n")
    ps = build_prompt_set(read_rows(tmp_path / "d.jsonl"), tokenizer, SIMPLE_TEMPLATE, max_prompt_length=64)
    r = ps.report
    assert r["rows"] == 6 and r["kept"] == 2 and r["bad_rows"] == 3 and r["too_long"] == 1
    assert r["kept"] + r["bad_rows"] + r["too_long"] + r["outside_levels"] == r["rows"]
    assert ps.ground_truths == ["2", "4"] and ps.levels == [1, 3] and ps.data_sources == ["a", "b"]
    assert ps.texts[0] == SIMPLE_TEMPLATE.replace("{input}", "What is 1+1?")

    sel = build_prompt_set(read_rows(tmp_path / "d.jsonl"), tokenizer, None, 1000, levels=[3])
    assert sel.ground_truths == ["4"] and sel.report["outside_levels"] == 2


def test_templates():
    assert apply_template("Q", template_text("simple")) == "Question:\nQ\nAnswer:\nLet's think step by step.\n"
    complex_ = apply_template("Q", template_text("complex"))
    assert complex_.endswith("within \\boxed{}.<|im_end|>\n<|im_start|>assistant\n") and "user\nQ\n" in complex_
    assert COMPLEX_TEMPLATE  # the schema's constant is the one used
    assert apply_template("{x}", "Solve {input} in \\boxed{}") == "Solve {x} in \\boxed{}"
    assert template_text("none") is None
    with pytest.raises(ValueError):
        template_text("custom", "no placeholder")


def test_batch_indices_deterministic_and_cover_each_epoch():
    n, bs = 10, 4
    steps = [batch_indices(s, bs, n, seed=1) for s in range(5)]  # 20 draws = 2 epochs
    flat = [i for s in steps for i in s]
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:]) == list(range(10))
    assert steps == [batch_indices(s, bs, n, seed=1) for s in range(5)]
    assert flat[:10] != flat[10:]
    assert batch_indices(0, 3, 5, seed=0, shuffle=False) == [0, 1, 2]


def test_synthetic_levels():
    import random

    rng = random.Random(0)
    for level, check in [(1, lambda p: p.op == "+" and p.a < 10 and p.b < 10),
                         (2, lambda p: p.op == "*" and p.a < 10 and p.b < 10),
                         (3, lambda p: p.op == "+" and max(p.a, p.b) >= 10 and min(p.a, p.b) < 10),
                         (4, lambda p: p.op == "+" and min(p.a, p.b) >= 10),
                         (5, lambda p: p.op == "*" and p.a >= 10)]:
        assert all(check(sample_problem(rng, level)) for _ in range(50))
    rows = generate_rows(20, [1, 2], seed=4)
    assert rows == generate_rows(20, [1, 2], seed=4)
    assert {r["level"] for r in rows} == {1, 2}
    assert all(str(eval(r["extra_info"]["expression"])) == r["reward_model"]["ground_truth"] for r in rows)
    with pytest.raises(ValueError):
        generate_rows(1, [9], seed=0)
