"""Worker handles and groups: the same worker classes in-process (the embedded default) or as Ray
actors in placement groups built from the plan.

`Handle.call(method, *args)` runs a method and returns its result either way; `WorkerGroup` holds a
role's rank workers and dispatches to all of them at once (broadcast, or one data-parallel shard per
rank) and collects from rank 0 (the trainer returns globally reduced results on every rank). No
placement decision is made here: bundles, device indices and which roles share a device are read off
`plan.bundles` and `plan.devices`.
"""

from __future__ import annotations

import socket
from typing import Any, Optional, Sequence


class LocalHandle:
    """A worker object in this process."""

    def __init__(self, obj: Any) -> None:
        self.obj = obj
        self.remote = False

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return getattr(self.obj, method)(*args, **kwargs)

    def submit(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Run now (in-process there is nothing to overlap); `gather` returns the result."""
        return self.call(method, *args, **kwargs)

    def shutdown(self) -> None:
        close = getattr(self.obj, "close", None)
        if callable(close):
            close()


class RayHandle:
    """A worker running as a Ray actor."""

    def __init__(self, actor: Any) -> None:
        self.actor = actor
        self.remote = True

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        import ray

        return ray.get(self.submit(method, *args, **kwargs))

    def submit(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Start the call; returns an object ref for `gather`."""
        return getattr(self.actor, method).remote(*args, **kwargs)

    def shutdown(self) -> None:
        import ray

        try:
            ray.get(self.actor.close.remote(), timeout=60)
        except Exception:  # the actor may have no close method, or be gone
            pass
        ray.kill(self.actor)


def gather(handles: Sequence[Any], pending: Sequence[Any]) -> list[Any]:
    """Results of calls started with ``submit`` (Ray refs are waited for together)."""
    if any(h.remote for h in handles):
        import ray

        return ray.get(list(pending))
    return list(pending)


class WorkerGroup:
    """A role's rank workers. ``dp_ranks[i]`` is the data-parallel rank of worker i (which shard of a
    batch it trains on); rank 0 answers for the group."""

    def __init__(self, handles: Sequence[Any], dp_ranks: Optional[Sequence[int]] = None) -> None:
        self.handles = list(handles)
        self.dp_ranks = list(dp_ranks) if dp_ranks is not None else [0] * len(self.handles)

    @property
    def data_parallel(self) -> int:
        return max(self.dp_ranks) + 1

    def broadcast(self, method: str, *args: Any, **kwargs: Any) -> list[Any]:
        """Every rank runs ``method(*args)`` at once (collectives inside need all of them)."""
        return gather(self.handles, [h.submit(method, *args, **kwargs) for h in self.handles])

    def scatter(self, method: str, shards: Sequence[Any], **kwargs: Any) -> list[Any]:
        """Rank i runs ``method(shards[dp_ranks[i]])``: one data-parallel shard per rank (TP and PP
        ranks of one replica get the same shard)."""
        if len(shards) != self.data_parallel:
            raise ValueError(f"{len(shards)} shards for {self.data_parallel} data-parallel ranks")
        return gather(self.handles, [h.submit(method, shards[d], **kwargs) for h, d in zip(self.handles, self.dp_ranks)])

    def call0(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Only rank 0 (for methods without collectives)."""
        return self.handles[0].call(method, *args, **kwargs)

    def shutdown(self) -> None:
        for h in self.handles:
            try:
                h.shutdown()
            except Exception:
                pass


def free_port() -> int:
    """A free TCP port on this host (the trainer group's rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def uses_ray(plan: Any) -> bool:
    """Ray when the plan names a cluster address, spans more than one device, or has trainer ranks in
    more than one process."""
    return bool(plan.spec.cluster.ray_address) or len(plan.devices) > 1


def init_ray(address: Optional[str]) -> None:
    """Connect to ``address`` (``auto`` or ``ray://...``; ``local`` starts one here) or start a local
    Ray instance."""
    import ray

    if ray.is_initialized():
        return
    kwargs: dict[str, Any] = {"ignore_reinit_error": True, "log_to_driver": True}
    if address and address != "local":
        kwargs["address"] = address
    else:
        kwargs.update(include_dashboard=False)
    ray.init(**kwargs)


# -- placement groups --------------------------------------------------------------------------------

class PlacementError(RuntimeError):
    """Ray cannot place the plan's bundles; the message names the missing resources."""


def placement_groups(plan: Any, timeout_s: float = 60.0) -> list[Any]:
    """One STRICT_PACK placement group per node of ``plan.bundles`` (a bundle per GPU), ready.

    Raises `PlacementError` naming what is missing when Ray cannot place them within ``timeout_s``
    (instead of waiting for ever)."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    groups = [placement_group([dict(b.resources) for b in node], strategy="STRICT_PACK",
                              name=f"{plan.spec.name}-node{node[0].node}-{plan.hash}") for node in plan.bundles]
    ready, _ = ray.wait([g.ready() for g in groups], num_returns=len(groups), timeout=timeout_s)
    if len(ready) == len(groups):
        return groups
    for g in groups:
        remove_placement_group(g)
    raise PlacementError(missing_resources(plan, ray.cluster_resources(), _node_resources()))


def _node_resources() -> list[dict[str, float]]:
    import ray

    return [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]


def missing_resources(plan: Any, total: dict[str, float], nodes: Sequence[dict[str, float]]) -> str:
    """Why the plan's bundles do not fit the cluster: per-node needs against the largest node."""
    need_nodes = len(plan.bundles)
    per_node = {k: sum(b.resources.get(k, 0.0) for b in plan.bundles[0]) for k in plan.bundles[0][0].resources}
    have = {k: max((n.get(k, 0.0) for n in nodes), default=0.0) for k in per_node}
    short = [f"{k} {per_node[k]:g} per node (largest node has {have[k]:g})" for k in per_node if have[k] < per_node[k]]
    fits = sum(1 for n in nodes if all(n.get(k, 0.0) >= v for k, v in per_node.items()))
    if fits < need_nodes:
        short.append(f"{need_nodes} nodes with that much (the cluster has {fits})")
    totals = ", ".join(f"{k} {total.get(k, 0.0):g}" for k in sorted(per_node))
    return (f"Ray cannot place plan '{plan.spec.name}': it needs {need_nodes} placement group(s) of "
            f"{len(plan.bundles[0])} bundles {dict(plan.bundles[0][0].resources)} (one per GPU, packed on one node); "
            f"missing: " + "; ".join(short or ["resources held by other jobs"]) + f". Cluster total: {totals}.")


def bundle_of(plan: Any, rank: int) -> tuple[int, int, int]:
    """(placement group index, bundle index, roles sharing the device) of device ``rank``."""
    for g, node in enumerate(plan.bundles):
        for i, b in enumerate(node):
            if b.rank == rank:
                return g, i, len(b.roles)
    raise KeyError(f"device rank {rank} has no bundle in the plan")


def actor_options(plan: Any, groups: Sequence[Any], rank: int) -> dict[str, Any]:
    """Ray options that put an actor on device ``rank``: its bundle, and 1/k of the GPU when k roles
    share the device (colocated)."""
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    g, i, k = bundle_of(plan, rank)
    return {"num_cpus": 0, "num_gpus": 1.0 / k,
            "scheduling_strategy": PlacementGroupSchedulingStrategy(placement_group=groups[g],
                                                                    placement_group_bundle_index=i)}


def spawn(cls: type, args: tuple, *, options: Optional[dict[str, Any]] = None, remote: bool) -> Any:
    """A handle on a new ``cls(*args)`` worker, local or as a Ray actor with ``options``."""
    if not remote:
        return LocalHandle(cls(*args))
    import ray

    opts = {"num_cpus": 0, "num_gpus": 0, "max_concurrency": 1, **(options or {})}
    return RayHandle(ray.remote(cls).options(**opts).remote(*args))


class Probe:
    """A weightless actor that reports where Ray put it (``engine.runtime.group.probe_placement``)."""

    def where(self) -> dict[str, Any]:
        import os

        import ray

        ctx = ray.get_runtime_context()
        return {"gpu_ids": [str(g) for g in ray.get_gpu_ids()], "node_id": ctx.get_node_id(),
                "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"), "pid": os.getpid()}


def probe_placement(plan: Any, timeout_s: float = 60.0) -> list[dict[str, Any]]:
    """Place one probe actor per (device, role) of the plan exactly as the run would place its workers,
    and report where each landed: ``{"rank", "role", "group", "bundle", "gpu_ids", ...}``. Checks a
    cluster before any model is loaded; raises `PlacementError` when the bundles cannot be placed."""
    import ray
    from ray.util.placement_group import remove_placement_group

    groups = placement_groups(plan, timeout_s)
    try:
        out = []
        for node in plan.bundles:
            for b in node:
                g, i, _ = bundle_of(plan, b.rank)
                for role in b.roles:
                    actor = ray.remote(Probe).options(**actor_options(plan, groups, b.rank)).remote()
                    out.append({"rank": b.rank, "node": b.node, "index": b.index, "role": role, "group": g,
                                "bundle": i, **ray.get(actor.where.remote())})
                    ray.kill(actor)
        return out
    finally:
        for g in groups:
            remove_placement_group(g)
