"""The rehearsal's memory ledger: what each process holds on each device, in the order the runtime's
calls make it hold it. Pure bookkeeping (no torch, no Ray).

Per device there are processes (a trainer rank, a generator worker). Each process holds named
components (its resident state: weights, optimizer, KV cache...) and, during a call, transients
(activations, logits, sync buffers). A torch process (``caching=True``) keeps what a call freed
*reserved* in its caching allocator until it is released (``torch.cuda.empty_cache``), so a device's
use is the sum of every process's reserved bytes: max(reserved so far, allocated now) for a caching
process, allocated for vLLM's own pool (its sleep really frees). The ledger records each device's
peak, the peak of every phase, what made it, and every violation (over capacity, vLLM's start check,
a bad device string, engine settings vLLM would refuse), each with the field that would fix it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

GIB = float(1 << 30)

#: Which spec field to change when a component is what overflows a device.
FIXES = {
    "kv_cache": "rollout.gpu_memory_utilization (lower), or rollout.sleep_level 1 or 2",
    "vllm_weights": "rollout.sleep_level 1 or 2 (weights off the GPU while the trainer runs), or rollout.tensor_parallel (higher)",
    "vllm_activations": "rollout.max_num_seqs (lower)",
    "optimizer": "trainer.offload=true, or more data-parallel ranks (cluster.nodes) for the distributed optimizer",
    "grads": "trainer.offload=true, or trainer.pipeline_parallel / tensor_parallel (higher)",
    "params": "trainer.pipeline_parallel / tensor_parallel (higher)",
    "reference": "trainer.offload=true (the reference leaves the GPU between its passes)",
    "activations": "trainer.micro_batch_size (lower) or trainer.recompute: full",
    "logits": "trainer.log_prob_micro_batch_size or trainer.micro_batch_size (lower), or trainer.tensor_parallel (higher)",
    "lp_activations": "trainer.log_prob_micro_batch_size (lower)",
    "lp_logits": "trainer.log_prob_micro_batch_size (lower), or trainer.tensor_parallel (higher)",
    "sync_buffers": "rollout.weight_bucket_mib (lower)",
    "handle_buffers": "rollout.weight_bucket_mib (lower; a buffer also holds the largest tensor whole)",
    "cached": "a runtime defect: the trainer's caching allocator was not released (release_memory) before the generator mapped memory",
}


@dataclass
class Process:
    """One process's share of a device (bytes)."""

    name: str
    caching: bool
    held: dict[str, float] = field(default_factory=dict)
    transient: dict[str, float] = field(default_factory=dict)
    reserved: float = 0.0

    @property
    def allocated(self) -> float:
        return sum(self.held.values()) + sum(self.transient.values())

    def used(self) -> float:
        """Device bytes this process occupies now."""
        if self.caching:
            self.reserved = max(self.reserved, self.allocated)
            return self.reserved
        return self.allocated

    def breakdown(self) -> dict[str, float]:
        out = {**self.held}
        for k, v in self.transient.items():
            out[k] = out.get(k, 0.0) + v
        if self.caching and self.reserved > self.allocated:
            out["cached"] = self.reserved - self.allocated
        return out


@dataclass
class Device:
    """One device's processes, capacity and the peaks seen."""

    rank: int
    capacity: float
    budget: float
    processes: dict[str, Process] = field(default_factory=dict)
    peak: float = 0.0
    peak_phase: str = ""
    peak_breakdown: dict[str, float] = field(default_factory=dict)
    phase_peaks: dict[str, float] = field(default_factory=dict)
    over: bool = False

    def used(self) -> float:
        return sum(p.used() for p in self.processes.values())

    def breakdown(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for p in self.processes.values():
            for k, v in p.breakdown().items():
                out[f"{p.name}:{k}"] = out.get(f"{p.name}:{k}", 0.0) + v
        return out


@dataclass
class Violation:
    """Something the real run would hit: ``kind`` (memory, vllm_start, device, engine_args, order,
    placement), where, what, and the field (or runtime defect) that would fix it."""

    kind: str
    device: Optional[int]
    phase: str
    message: str
    fix: str

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "device": self.device, "phase": self.phase, "message": self.message, "fix": self.fix}


class LedgerBook:
    """Every device of a plan. ``capacity`` / ``budget``: bytes per device rank (the budget is what the
    planner allowed itself: capacity less the headroom)."""

    def __init__(self, capacity: dict[int, float], budget: dict[int, float]) -> None:
        self.devices = {r: Device(r, float(capacity[r]), float(budget[r])) for r in capacity}
        self.violations: list[Violation] = []
        self.calls: list[tuple[int, str, str, str]] = []  # (device, process, call, phase), in order
        self.notes: list[str] = []
        self.launches: dict[int, dict[str, Any]] = {}

    # -- accounting ----------------------------------------------------------------------------
    def _proc(self, rank: int, process: str, caching: bool = True) -> Process:
        dev = self.devices[rank]
        if process not in dev.processes:
            dev.processes[process] = Process(process, caching)
        return dev.processes[process]

    def _observe(self, rank: int, phase: str) -> None:
        dev = self.devices[rank]
        used = dev.used()
        dev.phase_peaks[phase] = max(dev.phase_peaks.get(phase, 0.0), used)
        if used > dev.peak:
            dev.peak, dev.peak_phase, dev.peak_breakdown = used, phase, dev.breakdown()
        if used > dev.capacity and not dev.over:
            dev.over = True  # one violation per device: the first time it overflows
            parts = dev.breakdown()
            cached = [k for k, v in parts.items() if k.endswith(":cached") and v > 0]
            top = cached[0] if cached else max(parts, key=parts.get)  # memory nobody should hold is the culprit
            component = top.split(":", 1)[1]
            self.violate("memory", rank, phase,
                         f"device {rank} needs {used / GIB:.1f} GiB > {dev.capacity / GIB:.1f} GiB in the {phase} phase: "
                         + ", ".join(f"{k} {v / GIB:.1f}" for k, v in sorted(parts.items(), key=lambda kv: -kv[1])[:6]),
                         FIXES.get(component, f"the component {component}"))

    def hold(self, rank: int, process: str, component: str, nbytes: float, phase: str, caching: bool = True) -> None:
        """``process`` keeps ``component`` resident (replacing what it held under that name)."""
        self._proc(rank, process, caching).held[component] = float(nbytes)
        self._observe(rank, phase)

    def drop(self, rank: int, process: str, components: Any, phase: str) -> None:
        """``process`` frees ``components`` (names); a caching process keeps them reserved until released."""
        p = self._proc(rank, process)
        for c in [components] if isinstance(components, str) else components:
            p.held.pop(c, None)
        self._observe(rank, phase)

    def begin(self, rank: int, process: str, parts: dict[str, float], phase: str) -> None:
        """A call's transient allocations start (held until `end`)."""
        p = self._proc(rank, process)
        for k, v in parts.items():
            p.transient[k] = p.transient.get(k, 0.0) + float(v)
        self._observe(rank, phase)

    def end(self, rank: int, process: str, phase: str) -> None:
        """The call's transients are freed (still reserved by a caching process)."""
        p = self._proc(rank, process)
        p.used()  # fold the transient peak into the reservation first
        p.transient.clear()
        self._observe(rank, phase)

    def release(self, rank: int, process: str, phase: str) -> None:
        """``torch.cuda.empty_cache`` in ``process``: reserved shrinks to what is allocated."""
        p = self._proc(rank, process)
        p.reserved = p.allocated
        self._observe(rank, phase)

    def free(self, rank: int) -> float:
        """Bytes of ``rank`` no process occupies."""
        dev = self.devices[rank]
        return dev.capacity - dev.used()

    # -- records -------------------------------------------------------------------------------
    def call(self, rank: int, process: str, name: str, phase: str) -> None:
        self.calls.append((rank, process, name, phase))

    def violate(self, kind: str, device: Optional[int], phase: str, message: str, fix: str) -> None:
        self.violations.append(Violation(kind, device, phase, message, fix))

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def launch(self, replica: int, settings: dict[str, Any]) -> None:
        self.launches[replica] = settings

    # -- report --------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """Everything recorded, as plain data (what `engine.rehearse.report` renders)."""
        devices = []
        for r in sorted(self.devices):
            d = self.devices[r]
            devices.append({"rank": r, "peak_gib": round(d.peak / GIB, 3), "capacity_gib": round(d.capacity / GIB, 3),
                            "budget_gib": round(d.budget / GIB, 3), "margin_gib": round((d.capacity - d.peak) / GIB, 3),
                            "peak_phase": d.peak_phase,
                            "phases_gib": {k: round(v / GIB, 3) for k, v in sorted(d.phase_peaks.items())},
                            "at_peak_gib": {k: round(v / GIB, 3) for k, v in sorted(d.peak_breakdown.items(),
                                                                                     key=lambda kv: -kv[1]) if v > 0}})
        return {"devices": devices, "violations": [v.as_dict() for v in self.violations], "notes": list(self.notes),
                "calls": [list(c) for c in self.calls], "launches": {str(k): v for k, v in sorted(self.launches.items())}}
