"""Checking, before anything is loaded, that the machine (or Ray cluster) has what the plan needs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

from compiler.backends import backend

if TYPE_CHECKING:  # annotations only: no import at run time
    from compiler.plan import Plan


class ResourceError(RuntimeError):
    """The plan needs hardware that is not there. The message says what was needed and found."""


@dataclass(frozen=True)
class Found:
    """Accelerators visible to this run: count and the smallest device's memory (GiB)."""

    gpus: int
    min_gpu_memory_gib: float
    where: str


def local_hardware() -> Found:
    """GPUs visible to torch in this process."""
    import torch

    if not torch.cuda.is_available():
        return Found(0, 0.0, "this machine")
    n = torch.cuda.device_count()
    mem = min(torch.cuda.get_device_properties(i).total_memory for i in range(n)) / 2**30
    return Found(n, mem, "this machine")


def ray_hardware(address: str) -> Found:
    """GPUs of the Ray cluster at ``address`` (memory per GPU is not reported by Ray: taken as met)."""
    import ray

    if not ray.is_initialized():
        ray.init(address=address, ignore_reinit_error=True)
    gpus = int(ray.cluster_resources().get("GPU", 0))
    return Found(gpus, float("inf"), f"the Ray cluster at {address}")


#: Weight-sync methods this runtime executes (`plan.weight_sync.method`).
SYNC_METHODS = ("in_process", "broadcast")


def _missing_package(name: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(name) is None
    except (ImportError, ValueError):
        return True


def backend_problem(plan: Plan, roles: tuple[str, ...] = ("trainer", "generator")) -> Optional[str]:
    """Why this runtime cannot execute the plan's backends of ``roles`` or its weight sync here, or None
    (``engine eval`` asks only about the generator)."""
    chosen = {"trainer": plan.trainer.backend if plan.trainer else plan.spec.trainer.backend,
              "generator": plan.rollout.backend if plan.rollout else plan.spec.rollout.backend}
    problems = []
    for role, name in chosen.items():
        if role not in roles:
            continue
        info = backend(role, name)  # the catalog's packages and install command
        missing = [pkg for pkg in info.packages if _missing_package(pkg)]
        if missing:
            problems.append(f"the {role} backend '{name}' needs {', '.join(missing)}, which is not installed "
                            f"(install: {info.install})")
    ws = plan.weight_sync
    if "trainer" in roles and ws is not None and ws.method not in SYNC_METHODS:
        problems.append(f"the plan's weight sync '{ws.method}' ({plan.placement} placement on {len(plan.devices)} "
                        f"device(s)) is not executed by this version of the runtime (it executes: "
                        f"{', '.join(SYNC_METHODS)}); rather than run it another way, it stops here")
    if not problems:
        return None
    return f"plan '{plan.spec.name}' cannot run here. Nothing was loaded.\n  - " + "\n  - ".join(problems)


#: Memory components (`DevicePlan.memory_gib`) of the generator alone, for `engine eval`.
GENERATOR_COMPONENTS = ("vllm_weights", "vllm_activations", "vllm_non_torch", "cuda_graphs", "generator_context")


def generator_needs(plan: Plan) -> tuple[int, float]:
    """(GPUs, GiB per GPU) one generator replica needs: what `engine eval` needs, since evaluation
    runs no trainer. vllm: its weights, activations and fixed buffers plus the KV cache of one
    max-length sequence; hf: its weights and the KV cache of one micro-batch."""
    r = plan.rollout
    if plan.accelerator != "gpu" or r is None:
        return 0, 0.0
    dev = next((d for d in plan.devices if "generator" in d.roles), None)
    if dev is None:
        return r.tensor_parallel, 0.0
    m = dev.memory_gib
    if r.backend == "vllm":
        gib = sum(m.get(k, 0.0) for k in GENERATOR_COMPONENTS)
        if r.kv_cache_tokens:
            gib += m.get("kv_cache", 0.0) * min(1.0, r.max_model_len / r.kv_cache_tokens)
    else:  # hf: its own copy of the weights and the KV cache of one micro-batch
        gib = m.get("generator_weights", 0.0) + m.get("kv_cache", 0.0)
    return r.tensor_parallel, gib


def needs(plan: Plan, command: str = "run") -> tuple[int, float]:
    """(GPUs, GiB per GPU) the plan needs; (0, 0) for a CPU plan. ``command="eval"``: one generator
    replica (`generator_needs`)."""
    if plan.accelerator != "gpu":
        return 0, 0.0
    if command == "eval":
        return generator_needs(plan)
    gpus = len(plan.devices) or plan.nodes * plan.gpus_per_node
    return gpus, max((d.peak_gib for d in plan.devices), default=0.0)


def check_resources(plan: Plan, found: Optional[Found] = None, command: str = "run") -> Found:
    """Raise `ResourceError` unless the hardware covers the plan (count and per-GPU memory) and this
    runtime has the plan's backends (hardware is reported first). ``command`` names the `engine`
    command in the hint for running on a cluster; ``eval`` needs only the generator: one replica's
    GPUs and memory, its backend, and a generator layout even when training would not fit."""
    spec = plan.spec
    evaluating = command == "eval"
    if not plan.feasible and not (evaluating and plan.rollout is not None):
        raise ResourceError("the plan is not feasible as compiled:\n  - " + "\n  - ".join(plan.reasons)
                            + "\n(see `engine plan` for the placement and memory estimate)")
    want_gpus, want_gib = needs(plan, command)
    if want_gpus == 0:
        found = found or Found(0, 0.0, "this machine")
    elif found is None:
        found = ray_hardware(spec.cluster.ray_address) if spec.cluster.ray_address else local_hardware()
    short_count = found.gpus < want_gpus
    short_mem = found.gpus > 0 and found.min_gpu_memory_gib + 1e-6 < want_gib
    if short_count or short_mem:
        have = (f"{found.gpus} GPU(s)" + (f" of {found.min_gpu_memory_gib:.0f} GiB" if found.gpus and
                                            found.min_gpu_memory_gib != float("inf") else "")
                if found.gpus else "no GPU")
        layout = "for one generator replica" if evaluating else f"({plan.nodes} node(s) x {plan.gpus_per_node})"
        raise ResourceError(
            f"plan '{spec.name}' needs {want_gpus} GPU(s) {layout} with "
            f"about {want_gib:.1f} GiB each (capacity {spec.cluster.gpu_memory_gib:g} GiB); found {have} on "
            f"{found.where}. Nothing was loaded.\n"
            "To run it on a cluster: start Ray on the GPU nodes (`ray start --head` on one, `ray start "
            "--address=HEAD:6379` on the others), then run from the head node:\n"
            f"  engine {command} {(plan.sources or ['SPEC.yaml'])[0]} cluster.ray_address=auto\n"
            "or try the CPU quickstart: engine run specs/quickstart.yaml")
    _check_backends(plan, roles=("generator",) if evaluating else ("trainer", "generator"))
    return found


def _check_backends(plan: Plan, roles: tuple[str, ...] = ("trainer", "generator")) -> None:
    problem = backend_problem(plan, roles)
    if problem:
        raise ResourceError(problem)
