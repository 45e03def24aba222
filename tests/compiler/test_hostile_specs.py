"""Specs that cannot train or would not load in reasonable time: refused before anything starts.

Every float field is finite-checked (nan/inf from YAML or an override is an error naming the file,
line and field); YAML aliases are counted before anything expands them (an "alias bomb" of 10**8
values and a recursive alias are refused in moments)."""

from __future__ import annotations

from pathlib import Path

import pytest

from compiler import compile_spec
from compiler.errors import SpecError
from compiler.load import load_spec

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "specs" / "quickstart.yaml"


def _problems(source, overrides=()) -> dict:
    with pytest.raises(SpecError) as info:
        compile_spec(str(source), list(overrides))
    return {p.path: p for p in info.value.problems}


@pytest.mark.parametrize("override", ["trainer.lr=.inf", "reward.correct=.nan", "algorithm.kl_coef=-.inf",
                                      "rollout.top_p=.nan", "reward.format_penalty=-.inf"])
def test_non_finite_overrides_are_refused(override):
    key = override.split("=")[0]
    got = _problems(QUICKSTART, [override])
    assert key in got and "not a finite number" in got[key].message
    assert got[key].file == f"<override {override}>"


def test_non_finite_yaml_values_name_file_and_line(tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text(f"extends: {QUICKSTART}\ntrainer:\n  lr: .inf\nreward:\n  correct: .nan\n")
    got = _problems(spec)
    assert set(got) == {"trainer.lr", "reward.correct"}
    assert got["trainer.lr"].file.endswith("s.yaml") and got["trainer.lr"].line == 3
    assert got["reward.correct"].line == 5 and "nan" in got["reward.correct"].hint


def test_reward_config_refuses_non_finite_values():
    from engine.reward import RewardConfig

    for kw in ({"correct": float("nan")}, {"wrong": float("inf")}, {"timeout_s": float("inf")}):
        with pytest.raises(ValueError, match="finite"):
            RewardConfig(**kw)


def _bomb(levels: int) -> str:
    lines = ["b0: &b0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"b{i}: &b{i} [" + ", ".join([f"*b{i - 1}"] * 10) + "]" for i in range(1, levels + 1)]
    return "name: bomb\nbomb:\n" + "".join(f"  {ln}\n" for ln in lines)


@pytest.mark.timeout(60)
def test_an_alias_bomb_is_refused_before_expansion(tmp_path):
    spec = tmp_path / "bomb.yaml"
    spec.write_text(_bomb(8))  # 10**8 values once expanded (1155b1c: 9 levels never finished)
    with pytest.raises(SpecError) as info:
        load_spec(spec)
    from compiler.load import MAX_YAML_NODES

    (p,) = info.value.problems
    assert "aliases expand" in p.message and f"{MAX_YAML_NODES:,}" in p.message and p.line == 4


@pytest.mark.timeout(60)
def test_a_recursive_alias_is_refused(tmp_path):
    spec = tmp_path / "loop.yaml"
    spec.write_text("name: x\na: &a\n  b: *a\n")
    with pytest.raises(SpecError) as info:
        load_spec(spec)
    assert "recursive alias" in info.value.problems[0].message and info.value.problems[0].line == 3


def test_ordinary_aliases_still_work(tmp_path):
    spec = tmp_path / "ok.yaml"
    spec.write_text(f"extends: {QUICKSTART}\nx_common: &lr 0.000002\ntrainer:\n  lr: *lr\n")
    got = _problems(spec)  # x_common is an unknown field; the alias itself expands fine
    assert set(got) == {"x_common"}
