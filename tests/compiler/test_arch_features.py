"""Rope scaling and sliding windows from the architecture to the plan; the FP8 ablation's plan."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from compiler.catalog import CATALOG
from compiler.errors import SpecError
from compiler.resolve import architecture_from_config

SPECS = Path(__file__).resolve().parents[2] / "specs"
_LLAMA = {"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
          "num_key_value_heads": 2, "intermediate_size": 96, "vocab_size": 126, "max_position_embeddings": 128}
_L3 = {"factor": 8.0, "original_max_position_embeddings": 16, "low_freq_factor": 1.0, "high_freq_factor": 4.0}


def test_llama31_catalog_carries_its_rope_scaling():
    r = CATALOG["llama3.1-8b"].rope_scaling
    assert (r.type, r.factor, r.original_max_position_embeddings, r.low_freq_factor, r.high_freq_factor) == \
        ("llama3", 8.0, 8192, 1.0, 4.0)
    assert all(CATALOG[n].rope_scaling is None for n in CATALOG if n != "llama3.1-8b")


def test_rope_scaling_read_from_both_config_styles():
    v4 = architecture_from_config({**_LLAMA, "rope_theta": 5e5, "rope_scaling": {"rope_type": "llama3", **_L3}})
    # transformers 5 writes theta and scaling into rope_parameters
    v5 = architecture_from_config({**_LLAMA, "rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5, **_L3}})
    assert v4 == v5 and v4.rope_theta == 5e5 and v4.rope_scaling.original_max_position_embeddings == 16
    plain = architecture_from_config({**_LLAMA, "rope_parameters": {"rope_type": "default", "rope_theta": 1e4}})
    assert plain.rope_scaling is None and plain.rope_theta == 1e4
    lin = architecture_from_config({**_LLAMA, "rope_scaling": {"type": "linear", "factor": 2.0}})
    assert (lin.rope_scaling.type, lin.rope_scaling.factor) == ("linear", 2.0)


def test_an_unimplemented_rope_scaling_is_refused_not_dropped():
    with pytest.raises(SpecError, match="rope scaling 'yarn' is not implemented"):
        architecture_from_config({**_LLAMA, "rope_scaling": {"rope_type": "yarn", "factor": 4.0}})
    with pytest.raises(Exception, match="original_max_position_embeddings"):
        architecture_from_config({**_LLAMA, "rope_scaling": {"rope_type": "llama3", "factor": 8.0}})


def test_hf_config_carries_rope_scaling_and_window():
    from engine.modeling import hf_config

    cfg = hf_config(CATALOG["llama3.1-8b"])
    rp = getattr(cfg, "rope_parameters", None) or cfg.rope_scaling
    assert rp["rope_type"] == "llama3" and rp["factor"] == 8.0 and rp["original_max_position_embeddings"] == 8192
    assert hf_config(CATALOG["mistral-7b"]).sliding_window == 4096


def test_mistral_plan_executes_the_window_and_says_so():
    from compiler.api import compile_spec

    plan = compile_spec(str(SPECS / "mistral-7b.yaml"))
    assert plan.feasible and plan.architecture.sliding_window == 4096
    assert any("sliding window 4096 tokens: executed" in n and "(4095, 0)" in n for n in plan.notes)


def test_fp8_ablation_compiles_and_names_its_speedup_as_assumed():
    from compiler.api import compile_spec

    plan = compile_spec(str(SPECS / "ablations" / "qwen2.5-7b-fp8.yaml"))
    assert plan.feasible and plan.trainer.fp8 == "tensorwise" and plan.spec.rollout.quantization == "fp8"
    assert any("ASSUMED" in n and "1.3" in n for n in plan.notes)
    multiple = [n for n in plan.notes if n.startswith("megatron micro-batches")]
    assert multiple and f"multiple of {16 * plan.trainer.tensor_parallel} tokens" in multiple[0]
