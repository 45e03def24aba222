"""spec-diff: what differs between two fully resolved specs (and their plans).

Pure functions over values: specs are compared after inheritance, interpolation, overrides and
schema defaults, so two files that spell the same experiment differently are equal.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from compiler.plan import Plan
from schemas import ExperimentSpec

_MISSING = object()


@dataclass(frozen=True)
class Change:
    """One differing key: dotted path and its value in spec A and spec B (None when absent)."""

    path: str
    a: Any
    b: Any

    def to_dict(self) -> dict:
        return {"path": self.path, "a": self.a, "b": self.b}


def _flatten(value: Any, prefix: str, out: dict[str, Any]) -> None:
    if isinstance(value, dict) and value:
        for key, item in value.items():
            _flatten(item, f"{prefix}.{key}" if prefix else str(key), out)
    else:
        out[prefix] = value  # lists compare as whole values: a changed list is one change


def _diff_flat(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[Change]:
    changes = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key, _MISSING), b.get(key, _MISSING)
        if va is _MISSING or vb is _MISSING or va != vb:
            changes.append(Change(f"{prefix}{key}", None if va is _MISSING else va, None if vb is _MISSING else vb))
    return changes


def diff_specs(a: ExperimentSpec, b: ExperimentSpec) -> list[Change]:
    """Keys whose resolved values differ, sorted by path (empty when the specs are equal)."""
    fa: dict[str, Any] = {}
    fb: dict[str, Any] = {}
    _flatten(a.model_dump(mode="json"), "", fa)
    _flatten(b.model_dump(mode="json"), "", fb)
    return _diff_flat(fa, fb)


def plan_facts(plan: Plan) -> dict[str, Any]:
    """The plan-level values spec-diff compares (feasibility, layout, memory, time)."""
    t, r = plan.trainer, plan.rollout
    return {
        "feasible": plan.feasible,
        "world_size": plan.world_size,
        "trainer.tensor_parallel": t.tensor_parallel if t else None,
        "trainer.pipeline_parallel": t.pipeline_parallel if t else None,
        "trainer.context_parallel": t.context_parallel if t else None,
        "trainer.data_parallel": t.data_parallel if t else None,
        "trainer.gradient_accumulation": t.gradient_accumulation if t else None,
        "rollout.tensor_parallel": r.tensor_parallel if r else None,
        "rollout.replicas": r.replicas if r else None,
        "peak_memory_gib": round(plan.peak_memory_gib, 1),
        "step_time_s": round(plan.estimates.step_time_s, 1),
        "params_b": round(plan.estimates.params_b, 3),
        **run_cost(plan),
    }


def run_cost(plan: Plan) -> dict[str, Any]:
    """What one step and the whole run cost: ``rollouts_per_step`` (prompts x rollout.n, sequences),
    ``tokens_per_step`` (prompt + response tokens, upper bound) and ``gpu_hours`` (estimated step time
    x trainer.total_steps x GPUs / 3600; 0 for a CPU plan)."""
    spec = plan.spec
    rollouts = spec.data.train_batch_size * spec.rollout.n
    tokens = plan.estimates.tokens_per_step or rollouts * (spec.data.max_prompt_length + spec.data.max_response_length)
    gpus = plan.world_size if plan.accelerator == "gpu" else 0
    return {
        "rollouts_per_step": rollouts,
        "tokens_per_step": int(tokens),
        "gpu_hours": round(plan.estimates.step_time_s * spec.trainer.total_steps * gpus / 3600, 1),
    }


def diff_plans(a: Optional[Plan], b: Optional[Plan]) -> list[Change]:
    """Plan-level differences under a ``plan.`` prefix."""
    fa = plan_facts(a) if a is not None else {}
    fb = plan_facts(b) if b is not None else {}
    return _diff_flat(fa, fb, prefix="plan.")
