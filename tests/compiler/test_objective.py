"""The trainers' objective in the Plan (temperature, loss aggregation) and the combinations refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from compiler import compile_spec
from compiler.errors import SpecError

SPECS = Path(__file__).resolve().parents[2] / "specs"
QUICK, SEVEN = str(SPECS / "quickstart.yaml"), str(SPECS / "qwen2.5-7b.yaml")


def _refused(spec: str, overrides: list[str]) -> dict[str, str]:
    with pytest.raises(SpecError) as info:
        compile_spec(spec, overrides)
    return {p.path: p.message for p in info.value.problems}


def test_the_rollout_temperature_is_lowered_into_the_plan():
    assert compile_spec(QUICK).objective.temperature == 1.0
    plan = compile_spec(QUICK, ["rollout.temperature=0.7"])
    assert plan.objective.temperature == 0.7 and plan.objective.loss_agg == "token_mean"
    for t in ("0.6", "1.2"):
        assert compile_spec(str(SPECS / "ablations" / f"qwen2.5-7b-temp{t}.yaml")).objective.temperature == float(t)


def test_paper_specs_run_the_papers_micro_batch_token_mean():
    obj = compile_spec(SEVEN).objective
    assert (obj.loss_agg, obj.loss_micro_batch, obj.max_response_length) == ("micro_batch_token_mean", 2, 8192)


def test_dr_grpo_is_the_whole_recipe():
    plan = compile_spec(QUICK, ["algorithm.advantage=dr_grpo", "algorithm.loss_agg=auto"])
    assert plan.objective.loss_agg == "seq_mean_token_sum_norm" and plan.objective.max_response_length == 32
    # half of it (an explicit other mode) is refused, with the fix
    got = _refused(QUICK, ["algorithm.advantage=dr_grpo"])  # the quickstart states token_mean
    assert "only half of it" in got["algorithm.loss_agg"]
    assert compile_spec(QUICK, ["algorithm.advantage=grpo", "algorithm.loss_agg=auto"]).objective.loss_agg == "token_mean"


@pytest.mark.parametrize("override,path", [
    ("rollout.temperature=0", "rollout.temperature"),
    ("rollout.top_p=0.9", "rollout.top_p"),
    ("rollout.top_k=20", "rollout.top_k"),
])
def test_sampling_no_trainer_reproduces_is_refused(override, path):
    got = _refused(QUICK, [override])
    assert path in got, got


def test_loss_micro_batches_must_split_each_ranks_share():
    # quickstart: 32 prompts x 8 = 256 sequences per mini-batch, one rank: 3 does not divide it
    got = _refused(QUICK, ["algorithm.loss_agg=micro_batch_token_mean", "algorithm.loss_micro_batch=3"])
    assert "algorithm.loss_micro_batch" in got
    ok = compile_spec(QUICK, ["algorithm.loss_agg=micro_batch_token_mean", "algorithm.loss_micro_batch=4"])
    assert ok.feasible and ok.objective.loss_micro_batch == 4
