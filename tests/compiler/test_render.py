"""compiler.render: the text map and the summary dict."""

from __future__ import annotations

import json

from compiler.catalog import CATALOG
from compiler.lower import lower
from compiler.render import memory_bar, plan_summary, render_plan
from schemas import AlgorithmSpec, ClusterSpec, DataSpec, ExperimentSpec, ModelSpec, RolloutSpec, TrainerSpec


def plan(model="qwen2.5-7b", nodes=2, gpn=8, placement="colocated", cluster=None, trainer=None, rollout=None, **data):
    s = ExperimentSpec(name="render", model=ModelSpec(name=model), data=DataSpec(train="synthetic", **data),
                       cluster=ClusterSpec(nodes=nodes, gpus_per_node=gpn, **(cluster or {})), placement=placement,
                       trainer=TrainerSpec(**(trainer or {})), rollout=RolloutSpec(**(rollout or {})),
                       algorithm=AlgorithmSpec())
    return lower(s, CATALOG[model])


def test_memory_bar():
    assert memory_bar(40, 80, 10) == "█████░░░░░"
    assert memory_bar(0, 80, 4) == "░░░░"
    assert memory_bar(120, 80, 4) == "████!"


def test_render_feasible_16_gpus():
    p = plan()
    text = render_plan(p)
    assert text.startswith(f"plan {p.hash}  FEASIBLE")
    assert "model: qwen2.5-7b (7.62B params" in text
    assert "placement: colocated on 2 node(s) x 8 GPU(s)" in text
    assert "node 0:" in text and "node 1:" in text
    t = p.trainer
    assert f"TP{t.tensor_parallel} PP{t.pipeline_parallel}" in text
    line = next(x for x in text.splitlines() if x.strip().startswith("GPU 3 "))
    assert "[trainer,reference,generator]" in line and "█" in line and f"/80 GiB" in line
    assert "tokens/step <= 75,497,472" in text
    assert "notes:" in text and "reasons:" not in text
    assert render_plan(p) == text  # deterministic


def test_render_collapses_many_gpus():
    p = plan("qwen2.5-32b", 8, 8)
    text = render_plan(p)
    gpu_lines = [x for x in text.splitlines() if x.strip().startswith("GPU")]
    assert len(gpu_lines) <= 16
    assert "GPU 0-7 (x8)" in text


def test_render_infeasible_lists_reasons():
    p = plan("qwen2.5-32b", 1, 1)
    text = render_plan(p)
    assert "INFEASIBLE" in text and "reasons:" in text and "trainer (closest layout)" in text
    assert "!" in next(x for x in text.splitlines() if x.strip().startswith("GPU 0"))


def test_render_split_and_cpu():
    text = render_plan(plan(placement="split"))
    assert "[generator]" in text and "[trainer,reference]" in text
    cpu = plan("qwen2.5-0.5b", cluster=dict(accelerator="cpu"), trainer=dict(backend="torch"), rollout=dict(backend="hf"),
               train_batch_size=8, max_response_length=128)
    text = render_plan(cpu)
    assert "cpu [trainer,generator,reference,reward]" in text and "host RAM" in text


def test_plan_summary():
    p = plan()
    s = plan_summary(p)
    assert s["feasible"] is True and s["reasons"] == [] and s["hash"] == p.hash
    assert {"tensor_parallel", "pipeline_parallel", "data_parallel"} <= set(s["trainer"])
    assert {"tensor_parallel", "replicas"} <= set(s["rollout"])
    assert s["peak_memory_gib"] == round(p.peak_memory_gib, 3) and 0 < s["peak_memory_gib"] <= 80
    assert s["estimates"]["tokens_per_step"] == 1024 * 8 * 9216
    json.dumps(s)  # JSON-ready
    bad = plan_summary(plan("qwen2.5-32b", 1, 1))
    assert bad["feasible"] is False and bad["reasons"]
