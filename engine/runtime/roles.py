"""A run's roles, started as the plan places them: the generator replicas, the trainer group (with the
reference policy in the same ranks and layout), and the reward.

- One device (CPU, one GPU): one trainer worker in this process, holding the generator too (weight
  sync in-process; the hf generator shares the torch trainer's module).
- Several CPU processes (``cluster.processes``): the trainer ranks as Ray actors on this machine,
  joined by torch.distributed over gloo; rank 0 holds the generator.
- GPU plans on Ray: one placement group per node from ``plan.bundles``; each trainer rank and
  generator replica is an actor in the bundle of its device, asking for its share of the GPU
  (`engine.backends.vllm_launch`: a TP > 1 replica's actor holds none, vLLM's Ray executor starts
  its TP workers in the replica's bundles).

Start order: generators first (vLLM reserves ``gpu_memory_utilization`` x total at start and refuses
less free memory), asleep before the trainer builds its state on the same devices (colocated); then
the trainer group. The reward runs in the driver (its own pool of CPU processes). Every call to a
role goes through `engine.runtime.group.WorkerGroup` with the dispatch mode its worker method
declares.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

import torch

from engine.backends.base import Generation, SamplingParams
from engine.backends.vllm_launch import gpu_share, replica_launch
from engine.model_files import ModelFiles
from engine.runtime.batch import GROUP_KEYS, Batch, dp_shards, merge_dp
from engine.runtime.group import LocalHandle, WorkerGroup, bundle_of, init_ray, placement_groups, spawn, uses_ray
from engine.runtime.workers import GeneratorCalls, GeneratorWorker, RewardWorker, TrainerWorker, WorkerSetup

if TYPE_CHECKING:  # annotations only: no import at run time
    from compiler.plan import Plan


@dataclass
class Spawner:
    """Where each worker of a plan starts: in this process, or as a Ray actor in its device's bundle.

    remote: Ray actors (the plan spans devices, or names a Ray cluster). nodes: the nodes whose workers
    start as actors in placement groups (None: every node). A rehearsal (`engine.rehearse`) places
    some nodes for real and runs the other nodes' workers in this process against its ledger.
    """

    plan: Plan
    remote: bool
    nodes: Optional[set[int]] = None

    def __post_init__(self) -> None:
        self.groups: dict[int, Any] = {}
        if self.remote:
            init_ray(self.plan.spec.cluster.ray_address)
            if self.plan.bundles:
                self.groups = placement_groups(self.plan, nodes=self.nodes)

    def _node(self, rank: int) -> int:
        return self.plan.devices[rank].node

    def _placed(self, rank: int) -> bool:
        return self.remote and (self.nodes is None or self._node(rank) in self.nodes)

    def _bundle(self, rank: int, capture: bool = False) -> dict[str, Any]:
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        node, index = bundle_of(self.plan, rank)
        return {"scheduling_strategy": PlacementGroupSchedulingStrategy(
            placement_group=self.groups[node], placement_group_bundle_index=index,
            placement_group_capture_child_tasks=capture)}

    def trainer(self, args: tuple, rank: int) -> Any:
        if not self._placed(rank):
            return spawn(TrainerWorker, args, remote=False)
        opts = {**self._bundle(rank), "num_gpus": gpu_share(self.plan, rank)} if self.groups else None
        return spawn(TrainerWorker, args, options=opts, remote=True)

    def generator(self, args: tuple, replica: int) -> Any:
        rank = self.plan.rollout.replica_groups[replica][0]
        if not self._placed(rank):
            return spawn(GeneratorWorker, args, remote=False)
        opts = None
        if self.groups:
            launch = replica_launch(self.plan, replica)
            # a Ray-executor replica's actor holds no GPU; its TP workers, started by vLLM in the same
            # placement group (child-task capture), take the bundles' shares
            opts = {**self._bundle(rank, capture=launch.executor == "ray"), "num_gpus": launch.actor_gpus}
            if launch.env:  # what vLLM's Ray executor reads: the bundles and GPU share of its TP workers
                opts["runtime_env"] = {"env_vars": dict(launch.env)}
        return spawn(GeneratorWorker, args, options=opts, remote=True)

    def close(self) -> None:
        if self.groups:
            from ray.util.placement_group import remove_placement_group

            for g in self.groups.values():
                remove_placement_group(g)
            self.groups = {}


def worker_device(plan: Plan) -> str:
    """The device string a worker gets: ``cuda:0`` on GPU (its one visible GPU: Ray sets
    ``CUDA_VISIBLE_DEVICES`` per actor, and a one-GPU run uses the first), ``cpu`` otherwise."""
    return "cuda:0" if plan.accelerator == "gpu" else "cpu"


class Roles:
    """The generator replicas, trainer group and reward of one run (``training=False``: generator and
    reward only, for evaluation). ``order``: the colocated step order (`engine.runtime.sync.StepOrder`)
    that puts freshly started generators to sleep before the trainer builds. ``spawner``: where the
    workers start (default: as the plan places them); ``rehearsal``: stand-in settings for every
    worker (`engine.rehearse`)."""

    def __init__(self, plan: Plan, files: ModelFiles, threads: Optional[int] = None, training: bool = True,
                 order: Any = None, spawner: Optional[Spawner] = None, rehearsal: Any = None,
                 run_dir: Optional[str] = None) -> None:
        self.plan = plan
        shared = tuple(p for p in (files.model_path, files.tokenizer_path, run_dir) if p)
        setup = WorkerSetup(plan.to_json(), files.model_path, files.tokenizer_path, worker_device(plan), threads,
                            shared_paths=shared, rehearsal=rehearsal)
        self.spawner = spawner or Spawner(plan, uses_ray(plan))
        self.trainer: Optional[WorkerGroup] = None
        self.generators: Optional[WorkerGroup] = None
        self._broadcast_open = False
        self._shard_cache: Optional[tuple[dict, dict]] = None
        reference = training and plan.schedule.reference
        hosted = plan.weight_sync.method == "in_process" or plan.weight_sync.in_trainer  # rank 0 holds the generator
        try:
            if not (training and hosted):  # generators first: they reserve their memory on free devices
                self.generators = WorkerGroup(GeneratorWorker, [
                    self.spawner.generator((setup, j, training, group[0]), j)
                    for j, group in enumerate(plan.rollout.replica_groups)])
                if training and order is not None:
                    order.after_start(self)
            if training:
                ranks = plan.trainer.ranks
                world = len(ranks)
                by_rank = {d.rank: d for d in plan.devices}
                handles = [self.spawner.trainer((setup, i, world, hosted and i == 0, reference, rank), rank)
                           for i, rank in enumerate(ranks)]
                self.trainer = WorkerGroup(TrainerWorker, handles, [by_rank[r].mesh.dp for r in ranks])
                init = self.trainer.rendezvous() if world > 1 and rehearsal is None else None
                self.trainer.start(init)
                if hosted:
                    self.generators = WorkerGroup(GeneratorCalls, [handles[0]])
                    if order is not None:
                        order.after_start(self)
            self.reward = WorkerGroup(RewardWorker, [LocalHandle(RewardWorker(setup, files.end_token_strings))])
        except BaseException:
            self.shutdown()
            raise
        self.mini_batch = plan.schedule.mini_batch_sequences

    # -- generator --------------------------------------------------------------------------------------
    def generate(self, prompt_ids: list[list[int]], n: int, params: SamplingParams, seed: int) -> Generation:
        """Responses from every replica at once: replica j samples the j-th slice of the prompts."""
        k = len(self.generators.handles)
        size = -(-len(prompt_ids) // k)
        parts = [prompt_ids[j * size:(j + 1) * size] for j in range(k)]
        parts = [p for p in parts if p]
        outs = self.generators.generate([(p, n, params, seed + j) for j, p in enumerate(parts)])
        if len(outs) == 1:
            return outs[0]
        return Generation([r for o in outs for r in o.response_ids], [f for o in outs for f in o.finish_reasons],
                          [t for o in outs for t in o.texts], {k2: sum(o.stats.get(k2, 0.0) for o in outs) for k2 in outs[0].stats},
                          log_probs=None if outs[0].log_probs is None else [lp for o in outs for lp in o.log_probs])

    def push_weights(self, bucket_bytes: int, skip: tuple[str, ...] = ()) -> int:
        """Trainer -> generator weight sync as the plan says (`plan.weight_sync`); returns the tensors
        received (by each replica, for a broadcast)."""
        method = self.plan.weight_sync.method
        if method == "in_process":
            return sum(self.trainer.push_weights(bucket_bytes, skip))
        if method == "handles":
            if self.plan.weight_sync.in_trainer:
                return sum(self.trainer.push_by_handles(bucket_bytes, skip))
            return self._handle_weights(bucket_bytes, skip)
        if method == "broadcast" and not skip:
            return self._broadcast_weights(bucket_bytes)
        # refused before start by engine.runtime.resources; kept as a guard
        raise NotImplementedError(f"weight sync '{method}' is not executed by this runtime")

    def _handle_weights(self, bucket_bytes: int, skip: tuple[str, ...] = ()) -> int:
        """Colocated devices: each sending trainer rank hands the generator worker on its device its
        buckets by handle (`plan.weight_sync.senders`); every replica receives while the trainer sends."""
        ws = self.plan.weight_sync
        channel = dict(zip(self.plan.trainer.ranks, self.trainer.open_handles()))
        sender_of = dict(zip(ws.receivers, ws.senders))
        per_replica = [([channel[sender_of[r]] for r in group],) for group in self.plan.rollout.replica_groups]
        expected = None if skip else self.trainer.weight_names()
        receiving = self.generators.later.receive_by_handles([(chs, expected) for (chs,) in per_replica])
        self.trainer.send_by_handles(bucket_bytes, skip)
        return sum(receiving.result())

    def _broadcast_weights(self, bucket_bytes: int) -> int:
        """Trainer rank 0 broadcasts the stream to every generator worker over a group of their own
        (`plan.weight_sync.backend`), opened on the first sync."""
        if not self._broadcast_open:
            host, port = self.trainer.rendezvous().removeprefix("tcp://").rsplit(":", 1)
            tp = self.plan.rollout.tensor_parallel
            world = 1 + len(self.plan.weight_sync.receivers)
            backend = self.plan.weight_sync.backend
            joining = self.generators.later.join_broadcast(  # the group forms while rank 0 opens it
                [(host, int(port), world, 1 + j * tp, backend) for j in range(len(self.generators.handles))])
            self.trainer.open_broadcast(host, int(port), world)
            joining.result()
            self._broadcast_open = True
        names = self.trainer.weight_names()
        receiving = self.generators.later.receive_weights(names)
        self.trainer.broadcast_weights(bucket_bytes)
        return sum(receiving.result())

    # -- reward -----------------------------------------------------------------------------------------
    def grade(self, texts: list[str], ground_truths: list[str]) -> dict[str, list]:
        return self.reward.grade(texts, ground_truths)

    # -- trainer ----------------------------------------------------------------------------------------
    def _shards(self, batch: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        """The batch's data-parallel shards. One step calls the trainer several times on one growing batch
        (old and reference log-probs, then the update with advantages): a tensor is sharded once, on the
        first call that sends it."""
        dp = self.trainer.data_parallel
        if dp == 1:
            return [batch]
        if self._shard_cache is None or self._shard_cache[0] is not batch:
            self._shard_cache = (batch, {})
        known: dict[str, tuple[torch.Tensor, list]] = self._shard_cache[1]
        tensors = {k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}
        new = [k for k, v in tensors.items() if k not in known or known[k][0] is not v]
        if new:
            sub = dp_shards({k: tensors[k] for k in {*new, "responses", *GROUP_KEYS} if k in tensors}, dp, self.mini_batch)
            for k in new:
                known[k] = (tensors[k], [s[k] for s in sub if k in s])
        return [{k: known[k][1][d] for k in tensors if len(known[k][1]) == dp} for d in range(dp)]

    def log_probs(self, batch: Batch) -> torch.Tensor:
        """The current policy's per-token log-probs of the responses, [B, T]."""
        return merge_dp(self.trainer.compute_log_probs(self._shards(batch)), self.mini_batch)

    def reference_log_probs(self, batch: Batch) -> torch.Tensor:
        return merge_dp(self.trainer.compute_ref_log_probs(self._shards(batch)), self.mini_batch)

    def values(self, batch: Batch) -> torch.Tensor:
        return merge_dp(self.trainer.compute_values(self._shards(batch)), self.mini_batch)

    def update(self, batch: Batch) -> dict[str, float]:
        """One RL update over every rank's shard; the metrics are the group's (rank 0's)."""
        return self.trainer.update(self._shards(batch))[0]

    def save_trainer(self, folder: str) -> None:
        self.trainer.save_checkpoint(folder)

    def load_trainer(self, folder: str) -> None:
        self.trainer.load_checkpoint(folder)

    def export_hf(self, path: str) -> None:
        self.trainer.export_hf(path)

    # -- lifetime ---------------------------------------------------------------------------------------
    def reward_stats(self) -> dict[str, int]:
        try:
            return self.reward.stats()
        except Exception:
            return {}

    def shutdown(self) -> None:
        own = [] if self.generators is None else [
            h for h in self.generators.handles if self.trainer is None or h not in self.trainer.handles]
        handles = ([] if getattr(self, "reward", None) is None else self.reward.handles) + own
        for h in handles:
            try:
                h.shutdown()
            except Exception:
                pass
        if self.trainer is not None:
            self.trainer.shutdown()
        self.spawner.close()
