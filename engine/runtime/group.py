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
from typing import TYPE_CHECKING, Any, Optional, Sequence

from engine.runtime.dispatch import DROP_RESULT, Mode, mode_of

if TYPE_CHECKING:  # annotations only: no import at run time
    from compiler.plan import Plan


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
    """Results of calls started with ``submit``, in order: Ray refs are waited for together, in-process
    results (already computed) are taken as they are (a group may mix both: a rehearsal simulates
    the ranks of nodes it does not place for real)."""
    remote = [i for i, h in enumerate(handles) if h.remote]
    if not remote:
        return list(pending)
    import ray

    out = list(pending)
    for i, value in zip(remote, ray.get([pending[i] for i in remote])):
        out[i] = value
    return out


class WorkerGroup:
    """A role's rank workers, all of class ``cls``; methods are called as ``group.<method>(...)`` with the
    dispatch mode ``cls`` declares for them (`engine.runtime.dispatch`). ``dp_ranks[i]`` is the
    data-parallel rank of worker i (which shard of a batch it trains on); rank 0 answers for the group."""

    def __init__(self, cls: type, handles: Sequence[Any], dp_ranks: Optional[Sequence[int]] = None) -> None:
        self.cls = cls
        self.handles = list(handles)
        self.dp_ranks = list(dp_ranks) if dp_ranks is not None else [0] * len(self.handles)

    @property
    def data_parallel(self) -> int:
        return max(self.dp_ranks) + 1

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("cls", "handles", "dp_ranks"):
            raise AttributeError(name)
        mode = mode_of(self.cls, name)
        return lambda *args, **kwargs: self._start(name, mode, args, kwargs).result()

    @property
    def later(self) -> "_Later":
        """The same calls, started without waiting: ``p = group.later.m(...)``; ``p.result()`` waits
        (for a call that must overlap another one, e.g. joining a group while its root opens it)."""
        return _Later(self)

    def _start(self, name: str, mode: Mode, args: tuple, kwargs: dict) -> "Pending":
        if mode is Mode.RANK0:
            return Pending(self.handles[:1], [self.handles[0].submit(name, *args, **kwargs)], lambda outs: outs[0])
        if mode is Mode.ALL:
            return Pending(self.handles, [h.submit(name, *args, **kwargs) for h in self.handles])
        if mode is Mode.EACH:
            (per_handle,) = args
            if len(per_handle) > len(self.handles):
                raise ValueError(f"{len(per_handle)} argument tuples for {len(self.handles)} workers")
            used = self.handles[:len(per_handle)]
            return Pending(used, [h.submit(name, *a, **kwargs) for h, a in zip(used, per_handle)])
        shards, *rest = args
        if len(shards) != self.data_parallel:
            raise ValueError(f"{len(shards)} shards for {self.data_parallel} data-parallel ranks")
        # each shard is serialised once (Ray's object store), not once per TP x PP rank that reads it
        refs = put_once(self.handles, shards)
        seen: set[int] = set()
        pending = []
        for h, d in zip(self.handles, self.dp_ranks):
            first = d not in seen
            seen.add(d)
            arg = refs[d] if h.remote else shards[d]  # an in-process worker takes the value itself
            pending.append((d, first, h.submit(name, arg, *rest, **{**kwargs, DROP_RESULT: not first})))

        def by_dp(outs: list[Any]) -> list[Any]:
            firsts = {d: o for (d, first, _), o in zip(pending, outs) if first}
            return [firsts[d] for d in range(self.data_parallel)]

        return Pending(self.handles, [p for _, _, p in pending], by_dp)

    def shutdown(self) -> None:
        for h in self.handles:
            try:
                h.shutdown()
            except Exception:
                pass


class Pending:
    """Calls started on ``handles``; `result` waits for them and combines their results."""

    def __init__(self, handles: Sequence[Any], pending: Sequence[Any], combine: Any = None) -> None:
        self.handles, self.pending, self.combine = list(handles), list(pending), combine

    def result(self) -> Any:
        outs = gather(self.handles, self.pending)
        return self.combine(outs) if self.combine else outs


class _Later:
    def __init__(self, group: WorkerGroup) -> None:
        self._group = group

    def __getattr__(self, name: str) -> Any:
        mode = mode_of(self._group.cls, name)
        return lambda *args, **kwargs: self._group._start(name, mode, args, kwargs)


def put_once(handles: Sequence[Any], values: Sequence[Any]) -> list[Any]:
    """``values`` as Ray object refs (each serialised once) when any handle is a Ray actor, else as they are."""
    if not any(h.remote for h in handles):
        return list(values)
    import ray

    return [ray.put(v) for v in values]


def free_port() -> int:
    """A free TCP port on this host (the trainer group's rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def uses_ray(plan: Plan) -> bool:
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
    else:  # "local" starts one: never Ray's guess from /tmp/ray/ray_current_cluster (a stale one hangs)
        kwargs.update(address="local", include_dashboard=False)
    ray.init(**kwargs)


# -- placement groups --------------------------------------------------------------------------------

class PlacementError(RuntimeError):
    """Ray cannot place the plan's bundles; the message names the missing resources."""


def placement_groups(plan: Plan, timeout_s: float = 60.0, nodes: Optional[set[int]] = None) -> dict[int, Any]:
    """One STRICT_PACK placement group per node of ``plan.bundles`` (a bundle per GPU), ready; keyed by
    node. ``nodes``: only these nodes (a rehearsal places some nodes for real).

    Raises `PlacementError` naming what is missing when Ray cannot place them within ``timeout_s``
    (instead of waiting for ever)."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    chosen = [node for node in plan.bundles if nodes is None or node[0].node in nodes]
    groups = {node[0].node: placement_group([dict(b.resources) for b in node], strategy="STRICT_PACK",
                                            name=f"{plan.spec.name}-node{node[0].node}-{plan.hash}") for node in chosen}
    ready, _ = ray.wait([g.ready() for g in groups.values()], num_returns=len(groups), timeout=timeout_s)
    if len(ready) == len(groups):
        return groups
    for g in groups.values():
        remove_placement_group(g)
    raise PlacementError(missing_resources(plan, ray.cluster_resources(), _node_resources(), len(chosen)))


def _node_resources() -> list[dict[str, float]]:
    import ray

    return [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]


def missing_resources(plan: Plan, total: dict[str, float], nodes: Sequence[dict[str, float]],
                      need_nodes: Optional[int] = None) -> str:
    """Why the plan's bundles do not fit the cluster: per-node needs against the largest node."""
    need_nodes = len(plan.bundles) if need_nodes is None else need_nodes
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


def bundle_of(plan: Plan, rank: int) -> tuple[int, int]:
    """(node, bundle index in that node's placement group) of device ``rank``."""
    for node in plan.bundles:
        for i, b in enumerate(node):
            if b.rank == rank:
                return b.node, i
    raise KeyError(f"device rank {rank} has no bundle in the plan")


def actor_options(plan: Plan, groups: dict[int, Any], rank: int) -> dict[str, Any]:
    """Ray options that put a worker on device ``rank``: its bundle, and its share of the GPU
    (`engine.backends.vllm_launch.gpu_share`: 1/k when k processes share the device)."""
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    from engine.backends.vllm_launch import gpu_share

    node, i = bundle_of(plan, rank)
    return {"num_cpus": 0, "num_gpus": gpu_share(plan, rank),
            "scheduling_strategy": PlacementGroupSchedulingStrategy(placement_group=groups[node],
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


def probe_placement(plan: Plan, timeout_s: float = 60.0) -> list[dict[str, Any]]:
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
                g, i = bundle_of(plan, b.rank)
                for role in [r for r in b.roles if r in ("trainer", "generator")]:  # the GPU-holding processes
                    actor = ray.remote(Probe).options(**actor_options(plan, groups, b.rank)).remote()
                    out.append({"rank": b.rank, "node": b.node, "index": b.index, "role": role, "group": g,
                                "bundle": i, **ray.get(actor.where.remote())})
                    ray.kill(actor)
        return out
    finally:
        for g in groups.values():
            remove_placement_group(g)
