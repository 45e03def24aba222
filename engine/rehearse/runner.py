"""`rehearse`: run a GPU plan through the real runtime on this machine, stand-ins at the hardware edge.

The plan is executed by `engine.runtime.loop.train` as `engine run` would execute it: roles and worker
groups, the start order, the colocated step order, `rl_step`, the step-0 parity gate, evaluation,
a checkpoint and the final export (the last rehearsed step counts as a checkpoint, evaluation and
export step). Only the backends are stand-ins (`engine.rehearse.standins`), charging a ledger per
device. Worker placement is real for the first ``ray_nodes`` nodes: a local Ray with one fake node
per plan node (``ray.cluster_utils.Cluster`` when there are several), the plan's placement groups,
and each worker an actor in its bundle with its GPU share; the other nodes' workers run in this
process, against the same ledger.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

from compiler import memory as M

if TYPE_CHECKING:  # annotations only: no import at run time
    from compiler.plan import Plan


class RehearsalRefused(ValueError):
    """The plan cannot be rehearsed (a CPU plan runs for real; an infeasible plan is refused)."""


#: Ray's zero-copy torch tensors: a node's trainer ranks read their batch shard from the object store
#: instead of each holding a copy (the stand-ins never write to it), so a full node of ranks fits in
#: this machine's memory. Real runs keep Ray's default (a copy per actor).
_ZERO_COPY = {"RAY_ENABLE_ZERO_COPY_TORCH_TENSORS": "1"}


def _start_ray(gpus_per_node: int, nodes: int) -> tuple[Any, Optional[Any]]:
    """A local Ray with ``nodes`` fake nodes of ``gpus_per_node`` GPUs; returns (ray, cluster or None)."""
    import os
    import warnings

    os.environ.update(_ZERO_COPY)
    warnings.filterwarnings("ignore", message=".*[Zz]ero-copy tensor.*")
    warnings.filterwarnings("ignore", message=".*NumPy array is not writable.*")
    import ray
    from ray._private import ray_constants

    ray_constants.RAY_ENABLE_ZERO_COPY_TORCH_TENSORS = True  # read at import; ray may be imported already
    if ray.is_initialized():
        ray.shutdown()
    env = {"env_vars": dict(_ZERO_COPY)}
    if nodes <= 1:
        ray.init(address="local", num_cpus=2, num_gpus=gpus_per_node, include_dashboard=False, log_to_driver=False,
                 runtime_env=env)
        return ray, None
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "num_gpus": gpus_per_node})
    for _ in range(nodes - 1):
        cluster.add_node(num_cpus=2, num_gpus=gpus_per_node)
    ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False, runtime_env=env)
    cluster.wait_for_nodes()
    return ray, cluster


def rehearse(plan: Plan, steps: int = 2, ray_nodes: Optional[int] = 1, log: Callable[[str], None] = print,
             keep: Optional[str] = None) -> dict[str, Any]:
    """Rehearse ``plan`` for ``steps`` RL steps; returns the report (`engine.rehearse.report.build`).

    ray_nodes: how many of the plan's nodes are placed for real on a local Ray (None or 0: no Ray,
    every worker in this process). keep: a folder for the rehearsal's run folder (default: a temporary
    one, removed afterwards)."""
    from engine.rehearse.ledger import LedgerBook
    from engine.rehearse.report import build
    from engine.rehearse.standins import RehearsalSetup, ledger_actor
    from engine.rehearse.inputs import rehearsal_inputs
    from engine.runtime.group import uses_ray
    from engine.runtime.loop import Harness, train
    from engine.runtime.roles import Spawner

    if plan.accelerator != "gpu":
        raise RehearsalRefused(f"plan '{plan.spec.name}' is a CPU plan: it runs for real here (engine run)")
    if not plan.feasible:
        raise RehearsalRefused("the plan is not feasible as compiled:\n  - " + "\n  - ".join(plan.reasons))
    remote = bool(ray_nodes) and uses_ray(plan)
    placed = min(int(ray_nodes or 0), plan.nodes) if remote else 0
    capacity = {d.rank: d.capacity_gib * M.GIB for d in plan.devices}
    budget = {r: c - plan.spec.cluster.memory_headroom_gib * M.GIB for r, c in capacity.items()}
    root = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="rehearse-"))
    if not keep:
        # removed at exit, after aim's own exit-time cleanup (atexit runs last-registered first; aim
        # registers when the run opens its repo, later than this), which hangs on a deleted repo
        atexit.register(shutil.rmtree, str(root), True)
    cluster = None
    t0 = time.perf_counter()
    error: Optional[str] = None
    summary: dict[str, Any] = {}
    try:
        if remote:
            log(f"rehearse: local Ray with {placed} node(s) x {plan.gpus_per_node} fake GPUs")
            _, cluster = _start_ray(plan.gpus_per_node, placed)
            book = ledger_actor(capacity, budget)
        else:
            book = LedgerBook(capacity, budget)
        harness = Harness(rehearsal_inputs(plan, root / "model"), RehearsalSetup(book),
                          Spawner(plan, remote, nodes=set(range(placed)) if remote else None))
        try:
            summary = train(plan, root / "run", log=lambda s: log(f"  {s}"), stop_after=steps,
                            progress_stream=open("/dev/null", "w"), harness=harness)
        except Exception as e:  # what a real run would die of: reported with the ledger, not raised
            error = f"{type(e).__name__}: {e}"
            log(traceback.format_exc(limit=6))
        snapshot = book.snapshot()
    finally:
        import ray

        if remote and ray.is_initialized():
            ray.shutdown()
        if cluster is not None:
            cluster.shutdown()
    return build(plan, snapshot, steps=steps, wall_s=time.perf_counter() - t0, placed_nodes=placed, error=error,
                 summary=summary)
