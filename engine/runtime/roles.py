"""A run's roles, started as the plan places them: the trainer group (with the reference policy in
the same ranks and layout), the generator, and the reward.

- One device (CPU, one GPU): one trainer worker in this process, holding the generator too (weight
  sync in-process; the hf generator shares the torch trainer's module).
- Several CPU processes (``cluster.processes``): the trainer ranks as Ray actors on this machine,
  joined by torch.distributed over gloo; rank 0 holds the generator.
- GPU plans on Ray: one placement group per node from ``plan.bundles``; each trainer rank and
  generator replica is an actor in the bundle of its device (colocated roles share a bundle).

The reward runs in the driver (its own pool of CPU processes).
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from engine.backends.base import Generation, SamplingParams
from engine.model_files import ModelFiles
from engine.runtime.batch import dp_shards, merge_dp
from engine.runtime.group import (LocalHandle, WorkerGroup, actor_options, gather, init_ray, placement_groups,
                                  spawn, uses_ray)
from engine.runtime.workers import GeneratorWorker, RewardWorker, TrainerWorker, WorkerSetup


class Roles:
    """The trainer group, generator replicas and reward of one run (``training=False``: generator and
    reward only, for evaluation)."""

    def __init__(self, plan: Any, files: ModelFiles, threads: Optional[int] = None, training: bool = True) -> None:
        self.plan = plan
        device = "cuda" if plan.accelerator == "gpu" else "cpu"
        setup = WorkerSetup(plan.to_json(), files.model_path, files.tokenizer_path, device, threads)
        self.remote = uses_ray(plan)
        self.trainer: Optional[WorkerGroup] = None
        self.generators: list[Any] = []
        self._broadcast_open = False
        self._pgs: list[Any] = []
        reference = training and plan.spec.algorithm.kl_coef > 0
        hosted = plan.weight_sync.method == "in_process"
        if self.remote:
            init_ray(plan.spec.cluster.ray_address)
            self._pgs = placement_groups(plan) if plan.bundles else []
        if training:
            ranks = plan.trainer.ranks
            world = len(ranks)
            by_rank = {d.rank: d for d in plan.devices}
            handles = [spawn(TrainerWorker, (setup, i, world, hosted and i == 0, reference),
                             options=self._options(rank), remote=self.remote) for i, rank in enumerate(ranks)]
            init = handles[0].call("rendezvous") if world > 1 else None
            self.trainer = WorkerGroup(handles, [by_rank[r].mesh.dp for r in ranks])
            self.trainer.broadcast("start", init)
            if hosted:
                self.generators = [handles[0]]
        if not self.generators:
            self.generators = [spawn(GeneratorWorker, (setup, j, training), options=self._options(group[0]), remote=self.remote)
                               for j, group in enumerate(plan.rollout.replica_groups)]
        self.reward = LocalHandle(RewardWorker(setup, files.end_token_strings))
        a = plan.spec.algorithm
        self.mini_batch = a.ppo_mini_batch_size * plan.spec.rollout.n

    def _options(self, rank: int) -> Optional[dict[str, Any]]:
        return actor_options(self.plan, self._pgs, rank) if self._pgs else None

    # -- generator --------------------------------------------------------------------------------------
    def generate(self, prompt_ids: list[list[int]], n: int, params: SamplingParams, seed: int) -> Generation:
        """Responses from every replica at once: replica j samples the j-th slice of the prompts."""
        k = len(self.generators)
        if k == 1:
            return self.generators[0].call("generate", prompt_ids, n, params, seed)
        size = -(-len(prompt_ids) // k)
        parts = [(h, prompt_ids[j * size:(j + 1) * size]) for j, h in enumerate(self.generators)]
        parts = [(h, p) for h, p in parts if p]
        outs = gather([h for h, _ in parts], [h.submit("generate", p, n, params, seed + j) for j, (h, p) in enumerate(parts)])
        return Generation([r for o in outs for r in o.response_ids], [f for o in outs for f in o.finish_reasons],
                          [t for o in outs for t in o.texts], {k2: sum(o.stats.get(k2, 0.0) for o in outs) for k2 in outs[0].stats},
                          log_probs=None if outs[0].log_probs is None else [lp for o in outs for lp in o.log_probs])

    def generator_call(self, method: str, *args: Any) -> list[Any]:
        """``method`` on every generator replica (sleep, wake, reset_prefix_cache, events)."""
        return gather(self.generators, [h.submit(method, *args) for h in self.generators])

    def push_weights(self, bucket_bytes: int, skip: tuple[str, ...] = ()) -> int:
        """Trainer -> generator weight sync as the plan says (`plan.weight_sync`); returns the tensors
        received (by each replica, for a broadcast)."""
        method = self.plan.weight_sync.method
        if method == "in_process":
            return sum(self.trainer.broadcast("push_weights", bucket_bytes, skip))
        if method == "broadcast" and not skip:
            return self._broadcast_weights(bucket_bytes)
        # refused before start by engine.runtime.resources; kept as a guard
        raise NotImplementedError(f"weight sync '{method}' is not executed by this runtime")

    def _broadcast_weights(self, bucket_bytes: int) -> int:
        """Trainer rank 0 broadcasts the stream to every generator worker over a group of their own
        (`plan.weight_sync.backend`), opened on the first sync."""
        if not self._broadcast_open:
            host, port = self.trainer.call0("rendezvous").removeprefix("tcp://").rsplit(":", 1)
            tp = self.plan.rollout.tensor_parallel
            world = 1 + len(self.plan.weight_sync.receivers)
            backend = self.plan.weight_sync.backend
            joining = [h.submit("join_broadcast", host, int(port), world, 1 + j * tp, backend)
                       for j, h in enumerate(self.generators)]
            gather([self.trainer.handles[0]], [self.trainer.handles[0].submit("open_broadcast", host, int(port), world)])
            gather(self.generators, joining)
            self._broadcast_open = True
        names = self.trainer.call0("weight_names")
        receiving = [h.submit("receive_weights", names) for h in self.generators]
        self.trainer.broadcast("broadcast_weights", bucket_bytes)
        return sum(gather(self.generators, receiving))

    # -- reward -----------------------------------------------------------------------------------------
    def grade(self, texts: list[str], ground_truths: list[str]) -> dict[str, list]:
        return self.reward.call("grade", texts, ground_truths)

    # -- trainer ----------------------------------------------------------------------------------------
    def _per_dp(self, method: str, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """``method`` on each rank's data-parallel shard; results merged back into batch order."""
        dp = self.trainer.data_parallel
        outs = self.trainer.scatter(method, dp_shards(batch, dp, self.mini_batch))
        first = [next(o for o, d in zip(outs, self.trainer.dp_ranks) if d == r) for r in range(dp)]
        return merge_dp(first, self.mini_batch)

    def log_probs(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The current policy's per-token log-probs of the responses, [B, T]."""
        return self._per_dp("compute_log_probs", batch)

    def reference_log_probs(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self._per_dp("compute_ref_log_probs", batch)

    def values(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self._per_dp("compute_values", batch)

    def update(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """One RL update over every rank's shard; the metrics are the group's (rank 0's)."""
        return self.trainer.scatter("update", dp_shards(batch, self.trainer.data_parallel, self.mini_batch))[0]

    def save_trainer(self, folder: str) -> None:
        self.trainer.broadcast("save_checkpoint", folder)

    def load_trainer(self, folder: str) -> None:
        self.trainer.broadcast("load_checkpoint", folder)

    def export_hf(self, path: str) -> None:
        self.trainer.broadcast("export_hf", path)

    # -- lifetime ---------------------------------------------------------------------------------------
    def reward_stats(self) -> dict[str, int]:
        try:
            return self.reward.call("stats")
        except Exception:
            return {}

    def shutdown(self) -> None:
        handles = [self.reward] + [h for h in self.generators if self.trainer is None or h not in self.trainer.handles]
        for h in handles:
            try:
                h.shutdown()
            except Exception:
                pass
        if self.trainer is not None:
            self.trainer.shutdown()
        if self._pgs:
            from ray.util.placement_group import remove_placement_group

            for g in self._pgs:
                remove_placement_group(g)
