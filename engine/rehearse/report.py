"""The rehearsal's report: per device and phase, the rehearsed peak beside its capacity and the plan's own
estimate; the worst margin; every violation with its device, phase and fix; the launch settings of
each generator replica; the call order on device 0."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:  # annotations only: no import at run time
    from compiler.plan import Plan


def build(plan: Plan, snapshot: dict[str, Any], *, steps: int, wall_s: float, placed_nodes: int,
          error: Optional[str], summary: dict[str, Any]) -> dict[str, Any]:
    """The report as plain data (what ``engine rehearse --json`` prints)."""
    planned = {d.rank: d for d in plan.devices}
    devices = []
    for d in snapshot["devices"]:
        p = planned[d["rank"]]
        devices.append({**d, "node": p.node, "roles": list(p.roles), "planned_peak_gib": p.peak_gib,
                        "planned_phases_gib": dict(p.phases_gib), "real": p.node < placed_nodes})
    violations = list(snapshot["violations"])
    if error:
        violations.append({"kind": "runtime", "device": None, "phase": "", "message": error,
                           "fix": "what the real run would stop with (see the message)"})
    used = [d for d in devices if d["roles"]]
    worst = min(used, key=lambda d: d["margin_gib"]) if used else None
    calls = [c for c in snapshot["calls"] if c[0] == 0]
    return {
        "spec": plan.spec.name, "plan_hash": plan.hash, "steps": steps, "wall_s": round(wall_s, 1),
        "ok": not violations, "violations": violations,
        "worst": None if worst is None else {"device": worst["rank"], "margin_gib": worst["margin_gib"],
                                             "peak_gib": worst["peak_gib"], "phase": worst["peak_phase"],
                                             "capacity_gib": worst["capacity_gib"]},
        "placement": {"ray": placed_nodes > 0, "real_nodes": list(range(placed_nodes)),
                      "real_devices": sum(1 for d in devices if d["real"]), "devices": len(devices)},
        "devices": devices, "launches": snapshot["launches"], "notes": snapshot["notes"],
        "call_order_device0": [f"{c[1]}: {c[2]} [{c[3]}]" for c in calls],
        "steps_done": summary.get("steps_done"),
    }


def _phases(d: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v:.1f}" for k, v in d["phases_gib"].items())


def render(report: dict[str, Any]) -> str:
    """The report for people: devices grouped where their rehearsed phase peaks agree."""
    pl = report["placement"]
    where = (f"nodes {pl['real_nodes']} placed on a local Ray with fake GPUs ({pl['real_devices']} of {pl['devices']} "
             "devices), the others simulated in this process" if pl["ray"] else "every worker in this process (no Ray)")
    lines = [f"rehearsal of {report['spec']} (plan {report['plan_hash']}): {report['steps']} step(s) through the "
             f"runtime in {report['wall_s']:.0f} s; {where}",
             "devices (GiB): rehearsed peak / capacity (planned peak), peak phase; rehearsed peak per phase"]
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for d in report["devices"]:
        key = (tuple(d["roles"]), d["peak_gib"], d["peak_phase"], tuple(sorted(d["phases_gib"].items())))
        groups.setdefault(key, []).append(d)
    for key, ds in groups.items():
        d = ds[0]
        ranks = [x["rank"] for x in ds]
        label = f"{ranks[0]}" if len(ranks) == 1 else f"{ranks[0]}-{ranks[-1]}" if ranks == list(
            range(ranks[0], ranks[-1] + 1)) else ",".join(map(str, ranks))
        roles = "+".join(d["roles"]) or "idle"
        lines.append(f"  {label:>7} {roles:<30} {d['peak_gib']:6.1f} / {d['capacity_gib']:.1f} "
                     f"({d['planned_peak_gib']:.1f}), {d['peak_phase'] or '-'}; {_phases(d)}")
    w = report["worst"]
    if w:
        lines.append(f"worst margin: device {w['device']}, {w['margin_gib']:.1f} GiB free at its peak "
                     f"({w['peak_gib']:.1f} of {w['capacity_gib']:.1f} GiB, {w['phase']} phase)")
    for k, v in report["launches"].items():
        env = " ".join(f"{a}={b}" for a, b in v["env"].items())
        lines.append(f"generator replica {k}: executor {v['executor']}, TP {v['tensor_parallel']}, devices "
                     f"{v['device_ranks']}, bundles {v['bundle_indices']} on node {v['node']}, "
                     f"{v['per_worker_gpus']:g} GPU per worker, max_model_len {v['max_model_len']}" + (f"; {env}" if env else ""))
        if len(report["launches"]) > 2 and k == "0":
            lines.append(f"  (and {len(report['launches']) - 1} more replicas alike: see --json)")
            break
    scheduled = [n for n in report["notes"] if "TP workers scheduled" in n]
    simulated = [n for n in report["notes"] if "simulated in this process" in n]
    if scheduled:
        lines.append(f"vLLM's Ray executor: the TP workers of {len(scheduled)} replica(s) scheduled for real in their "
                     "bundles beside the trainer ranks" + (f"; {len(simulated)} replica(s) on simulated nodes" if simulated else ""))
    for n in [n for n in report["notes"] if n not in scheduled and n not in simulated][:6]:
        lines.append(f"note: {n}")
    if report["violations"]:
        lines.append(f"violations: {len(report['violations'])}")
        for v in report["violations"][:20]:
            where = f"device {v['device']}" if v["device"] is not None else "run"
            lines.append(f"  - [{v['kind']}] {where}, {v['phase'] or '-'}: {v['message']}\n    fix: {v['fix']}")
        if len(report["violations"]) > 20:
            lines.append(f"  ... and {len(report['violations']) - 20} more (--json lists them all)")
    else:
        lines.append("violations: none")
    return "\n".join(lines)
