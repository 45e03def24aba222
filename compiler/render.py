"""Plain-text rendering and a compact dict summary of a `Plan` (deterministic, no markup)."""

from __future__ import annotations

from compiler.plan import DevicePlan, Plan

BAR = 24
#: At or below this many devices every GPU gets its own line; above, identical GPUs of a node are
#: collapsed into one line with a count.
MAX_ROWS = 16


def memory_bar(used: float, capacity: float, width: int = BAR) -> str:
    """'████░░░░' filled in proportion to used/capacity (clipped; '!' marks an overflow)."""
    if capacity <= 0:
        return "·" * width
    filled = min(width, round(width * used / capacity))
    bar = "█" * filled + "░" * (width - filled)
    return bar + ("!" if used > capacity else "")


def _roles(d: DevicePlan) -> str:
    return "[" + ",".join(d.roles) + "]" if d.roles else "[idle]"


def _device_line(d: DevicePlan, label: str, show_stage: bool = True) -> str:
    stage = f" stage {d.stage}" if show_stage and d.stage is not None else ""
    phase = f" ({d.peak_phase})" if d.peak_phase and d.peak_phase != "idle" else ""
    used = f"{d.peak_gib:.1f}/{d.capacity_gib:g} GiB" if d.capacity_gib else f"{d.peak_gib:.1f} GiB of host RAM"
    return f"  {label} {_roles(d)}{stage} {memory_bar(d.peak_gib, d.capacity_gib)} {used}{phase}"


def _signature(d: DevicePlan) -> tuple:
    return (tuple(d.roles), d.stage, round(d.peak_gib, 1), d.peak_phase)


def _grid(plan: Plan) -> list[str]:
    lines: list[str] = []
    if plan.accelerator == "cpu":
        for d in plan.devices:
            lines.append(_device_line(d, "cpu"))
        return lines
    collapse = len(plan.devices) > MAX_ROWS
    stages = plan.trainer is not None and plan.trainer.pipeline_parallel > 1
    for node in sorted({d.node for d in plan.devices}):
        devs = [d for d in plan.devices if d.node == node]
        lines.append(f"node {node}:")
        if not collapse:
            lines += [_device_line(d, f"GPU {d.index}", stages) for d in devs]
            continue
        i = 0
        while i < len(devs):  # runs of consecutive identical GPUs
            j = i
            while j + 1 < len(devs) and _signature(devs[j + 1]) == _signature(devs[i]):
                j += 1
            label = f"GPU {devs[i].index}" if i == j else f"GPU {devs[i].index}-{devs[j].index} (x{j - i + 1})"
            lines.append(_device_line(devs[i], label, stages))
            i = j + 1
    return lines


def _detail(plan: Plan) -> list[str]:
    """Component breakdown of the most loaded device."""
    if not plan.devices:
        return []
    d = max(plan.devices, key=lambda x: x.peak_gib)
    parts = ", ".join(f"{k} {v:.1f}" for k, v in sorted(d.memory_gib.items(), key=lambda kv: -kv[1]) if v >= 0.05)
    phases = ", ".join(f"{k} {v:.1f}" for k, v in d.phases_gib.items())
    where = "cpu" if plan.accelerator == "cpu" else f"GPU {d.rank} (node {d.node}, index {d.index})"
    out = [f"most loaded: {where}, {d.peak_phase} phase: {parts} GiB"]
    if phases:
        out.append(f"  per phase: {phases} GiB")
    return out


def _params(billions: float) -> str:
    """Parameter count for humans: ``7.62B`` or, below 0.01B, ``206.3K`` / ``1.50M``."""
    if billions >= 0.01:
        return f"{billions:.2f}B"
    n = billions * 1e9
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}K"


def render_plan(plan: Plan) -> str:
    """A readable map of the plan: header, device grid with memory bars, sizes, estimates, notes."""
    a = plan.architecture
    status = "FEASIBLE" if plan.feasible else "INFEASIBLE"
    if plan.accelerator == "cpu":
        where = "cpu (1 process)"
    else:
        where = f"{plan.nodes} node(s) x {plan.gpus_per_node} GPU(s), {plan.spec.cluster.gpu_memory_gib:g} GiB each"
    lines = [
        f"plan {plan.hash}  {status}",
        f"experiment: {plan.spec.name}   model: {plan.spec.model.name} ({_params(plan.estimates.params_b)} params, "
        f"{a.num_layers} layers, h={a.hidden_size}, heads {a.num_heads}/{a.num_kv_heads} kv, vocab {a.vocab_size})",
        f"placement: {plan.placement} on {where}",
        "",
    ]
    t, r = plan.trainer, plan.rollout
    if t is not None:
        head = "trainer" if plan.feasible else "trainer (closest layout)"
        lines.append(f"{head}: {t.backend} TP{t.tensor_parallel} PP{t.pipeline_parallel} CP{t.context_parallel} "
                     f"DP{t.data_parallel}{' SP' if t.sequence_parallel else ''}, micro-batch {t.micro_batch_size} x "
                     f"{t.gradient_accumulation} accumulation, recompute {t.recompute}, fp8 {t.fp8}"
                     f"{', offload' if t.offload else ''}, {len(t.ranks)} device(s)")
    if r is not None and r.backend == "hf":
        lines.append(f"generator: hf TP{r.tensor_parallel} x {r.replicas} replica(s), max_model_len {r.max_model_len}, "
                     f"{r.concurrency} sequences at once")
    elif r is not None:
        lines.append(f"generator: {r.backend} TP{r.tensor_parallel} x {r.replicas} replica(s), gpu_memory_utilization "
                     f"{r.gpu_memory_utilization}, sleep level {r.sleep_level}, KV {r.kv_cache_tokens} tokens/replica, "
                     f"max_model_len {r.max_model_len}, concurrency {r.concurrency}")
    o = plan.objective
    agg = o.loss_agg + (f" ({o.loss_micro_batch} sequences per loss micro-batch)" if o.loss_agg == "micro_batch_token_mean"
                        else f" (/ {o.max_response_length} tokens)" if o.loss_agg == "seq_mean_token_sum_norm" else "")
    lines.append(f"objective: log-probs and entropy at temperature {o.temperature:g}, loss {agg}")
    if t is not None or r is not None:
        lines.append("")
    if plan.devices:
        lines.append("devices (estimated peak memory):")
        lines += _grid(plan)
        lines += _detail(plan)
        lines.append("")
    e = plan.estimates
    if plan.accelerator == "cpu":
        lines.append(f"tokens/step <= {e.tokens_per_step:,}   step time: not estimated on CPU")
    else:
        lines.append(f"tokens/step <= {e.tokens_per_step:,}   step ~ {e.step_time_s:.0f} s (generation {e.generation_time_s:.0f} s, "
                     f"log-probs {e.log_prob_time_s:.0f} s, training {e.training_time_s:.0f} s, sync {e.sync_time_s:.1f} s)")
    if plan.reasons:
        lines.append("")
        lines.append("reasons:")
        lines += [f"  - {x}" for x in plan.reasons]
    if plan.notes:
        lines.append("")
        lines.append("notes:")
        lines += [f"  - {x}" for x in plan.notes]
    return "\n".join(lines) + "\n"


def plan_summary(plan: Plan) -> dict:
    """A compact, JSON-ready dict of the plan's decisions (for CLIs, diffs and dashboards)."""
    t, r = plan.trainer, plan.rollout
    trainer = None if t is None else {
        "backend": t.backend, "tensor_parallel": t.tensor_parallel, "pipeline_parallel": t.pipeline_parallel,
        "context_parallel": t.context_parallel, "data_parallel": t.data_parallel, "sequence_parallel": t.sequence_parallel,
        "micro_batch_size": t.micro_batch_size, "gradient_accumulation": t.gradient_accumulation,
        "recompute": t.recompute, "offload": t.offload, "fp8": t.fp8, "devices": len(t.ranks),
    }
    rollout = None if r is None else {
        "backend": r.backend, "tensor_parallel": r.tensor_parallel, "replicas": r.replicas,
        "gpu_memory_utilization": r.gpu_memory_utilization, "sleep_level": r.sleep_level,
        "kv_cache_tokens": r.kv_cache_tokens, "concurrency": r.concurrency, "devices": len(r.ranks),
    }
    return {
        "feasible": plan.feasible,
        "model": plan.spec.model.name,
        "placement": plan.placement,
        "accelerator": plan.accelerator,
        "nodes": plan.nodes,
        "gpus_per_node": plan.gpus_per_node,
        "trainer": trainer,
        "rollout": rollout,
        "peak_memory_gib": round(plan.peak_memory_gib, 3),
        "capacity_gib": max((d.capacity_gib for d in plan.devices), default=0.0),
        "reasons": list(plan.reasons),
        "hash": plan.hash,
        "estimates": plan.estimates.model_dump(mode="json"),
    }
