"""Stand-ins for the backends that need a GPU: the `engine.backends.base` protocols, with a memory
ledger (`engine.rehearse.ledger`) where the accelerator would be.

The registry builds these instead of the plan's backends when a worker is handed a
`RehearsalSetup` (`compiler.backends.REHEARSAL_BUILDERS`); everything around them (workers, worker
groups, placement groups, the step order, `rl_step`, the parity gate, checkpoints, evaluation) is the
real runtime. What each call holds is sized by `compiler.memory` for the shapes the call really gets
(the batch's padded width, the plan's micro-batches); when it holds it is decided by the runtime's
call order. They also check what a real backend would refuse: device strings (torch's own parser, and
the index against the GPUs the process sees), vLLM's start-up memory check, its executor and Ray
bundles (the TP workers vLLM would start are scheduled for real, on Ray's fake GPUs, beside the
trainer's share), and ``max_model_len`` against every request.
"""

from __future__ import annotations

import json
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Optional, Sequence

import torch

from compiler import memory as M
from engine.backends.base import Generation, SamplingParams, WeightBucket
from engine.backends.manifest import check_manifest


class Book:
    """The run's `LedgerBook`, in this process or behind a Ray actor (every stand-in of a rehearsal
    writes to the same one, whichever process it runs in)."""

    def __init__(self, target: Any) -> None:
        self.target = target

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name == "target":  # unpickling looks attributes up before __dict__ is set
            raise AttributeError(name)
        fn = getattr(self.target, name)
        remote = getattr(fn, "remote", None)
        if remote is None:
            return fn
        import ray

        return lambda *args: ray.get(remote(*args))


class _LedgerActor:
    """`LedgerBook` as a Ray actor (methods return values, so the caller waits for each entry)."""

    def __init__(self, capacity: dict[int, float], budget: dict[int, float]) -> None:
        from engine.rehearse.ledger import LedgerBook

        self.book = LedgerBook(capacity, budget)

    def apply(self, name: str, *args: Any) -> Any:
        return getattr(self.book, name)(*args)


class RemoteBook:
    """What `Book` wraps when the ledger is a Ray actor: ``book.hold(...)`` -> ``actor.apply("hold", ...)``."""

    def __init__(self, actor: Any) -> None:
        self.actor = actor

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name == "actor":
            raise AttributeError(name)
        import ray

        return lambda *args: ray.get(self.actor.apply.remote(name, *args))


def ledger_actor(capacity: dict[int, float], budget: dict[int, float]) -> RemoteBook:
    """A `LedgerBook` in a Ray actor of its own (no GPU), for a rehearsal with Ray workers."""
    import ray

    return RemoteBook(ray.remote(_LedgerActor).options(num_cpus=0, num_gpus=0).remote(capacity, budget))


@dataclass(frozen=True)
class RehearsalSetup:
    """What every stand-in gets: the ledger, and how the generator shapes its synthetic responses
    (``long_every``: one response in that many runs to the length limit, the rest are short)."""

    book: Any
    long_every: int = 8


# -- checks shared by the stand-ins -------------------------------------------------------------------

def visible_gpus() -> Optional[int]:
    """GPUs this process sees: Ray's ``CUDA_VISIBLE_DEVICES`` when set, else None (simulated)."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is None:
        return None
    return len([g for g in env.split(",") if g.strip()])


def check_device(book: Book, device: str, rank: Optional[int], who: str) -> None:
    """The device string through torch's parser; a CUDA index must name a GPU this process sees."""
    try:
        d = torch.device(device)
    except (RuntimeError, TypeError) as e:
        book.violate("device", rank, "start", f"{who}: device {device!r} is not a torch device ({e})",
                     "a runtime defect: workers get 'cpu' or 'cuda:<local index>'")
        return
    if d.type != "cuda":
        return
    if d.index is None:
        book.violate("device", rank, "start",
                     f"{who}: device {device!r} has no index; torch.cuda.set_device raises 'Expected a torch.device "
                     "with a specified index'", "a runtime defect: hand workers 'cuda:<local index>'")
        return
    seen = visible_gpus()
    if seen is not None and d.index >= seen:
        book.violate("device", rank, "start", f"{who}: device {device!r} but the process sees {seen} GPU(s) "
                     f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r})",
                     "a runtime defect: the index is local to the GPUs Ray gives the actor")


def hf_names(arch: Any) -> list[str]:
    """The HF tensor names a Qwen2/Llama-style decoder exports (what the weight stream yields)."""
    names = ["model.embed_tokens.weight"]
    for i in range(arch.num_layers):
        p = f"model.layers.{i}."
        names += [p + "input_layernorm.weight", p + "post_attention_layernorm.weight"]
        for proj in ("q_proj", "k_proj", "v_proj"):
            names.append(p + f"self_attn.{proj}.weight")
            if arch.qkv_bias:
                names.append(p + f"self_attn.{proj}.bias")
        names += [p + "self_attn.o_proj.weight", p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight",
                  p + "mlp.down_proj.weight"]
    names.append("model.norm.weight")
    if not arch.tied_embeddings:
        names.append("lm_head.weight")
    return names


# -- the trainer ----------------------------------------------------------------------------------------

class RehearsalTrainer:
    """One trainer rank (or the frozen reference) on its device, in the ledger.

    Resident: Megatron's model state of the rank's shard (`compiler.memory.megatron_state_bytes`;
    FSDP's for the torch backend), the reference's bf16 shard, the process overhead. Transient per call:
    log-probs (one layer's activations and forward-only logits at the log-prob micro-batch, on the
    last stage), update (1F1B activations and training logits), weight push (a gathered full tensor,
    and the bucket on the source rank), HF export (a gathered tensor).
    """

    def __init__(self, ctx: Any) -> None:
        self.plan, self.ctx = ctx.plan, ctx
        self.book = Book(ctx.rehearsal.book)
        self.frozen = ctx.frozen
        self.rank = ctx.rank
        self.process = "trainer"
        plan = self.plan
        t = plan.trainer
        ranks = t.ranks
        self.device_rank = ctx.device_rank if ctx.device_rank is not None else ranks[ctx.rank]
        dev = plan.devices[self.device_rank]
        self.tp_rank, self.pp_rank, self.dp_rank = dev.mesh.tp, dev.mesh.pp, dev.mesh.dp
        self.stage = dev.mesh.pp
        self.last_stage = self.stage == t.pipeline_parallel - 1
        who = f"trainer rank {ctx.rank}" + (" (reference)" if self.frozen else "")
        check_device(self.book, ctx.device, self.device_rank, who)
        if t.tensor_parallel * t.pipeline_parallel * t.context_parallel * t.data_parallel != len(ranks):
            self.book.violate("placement", self.device_rank, "start", f"{who}: TP x PP x CP x DP != {len(ranks)} ranks",
                              "a compiler defect")
        self.gpu = plan.accelerator == "gpu"
        a = plan.architecture
        if t.backend == "megatron":
            shard = M.shard_params(a, t.tensor_parallel, t.pipeline_parallel, self.stage)
            st = M.megatron_state_bytes(shard, t.data_parallel * t.context_parallel, t.distributed_optimizer, t.offload)
            ref = 2.0 * shard
        else:
            P = M.total_params(a)
            st = M.fsdp_state_bytes(P, t.data_parallel, M.layer_params(a, 1), t.offload)
            ref = 2.0 * P / t.data_parallel
        self.state = {"params": st.params, "grads": st.grads, "optimizer": st.optimizer}
        self.offloaded_parts = ("grads", "optimizer") if t.offload else ()
        self.ref_bytes = ref
        self._on(f"build{' reference' if self.frozen else ''}", "start")
        if self.frozen:
            self.book.hold(self.device_rank, self.process, "reference", ref, "start")
        else:
            self.book.hold(self.device_rank, self.process, "trainer_overhead", float(M.TRAINER_OVERHEAD), "start")
            for k, v in self.state.items():
                self.book.hold(self.device_rank, self.process, k, v, "start")
        self.steps = 0
        self.on_device = True

    def _on(self, call: str, phase: str) -> None:
        self.book.call(self.device_rank, self.process, ("reference." if self.frozen else "trainer.") + call, phase)

    # -- sizes ---------------------------------------------------------------------------------
    def _shape(self, batch: Mapping[str, Any]) -> tuple[int, int, int]:
        ids = batch["input_ids"]
        return int(ids.shape[0]), int(ids.shape[1]), int(batch["responses"].shape[1])

    def _keeps_result(self) -> bool:
        # a worker group collects from the first rank of each data-parallel replica (tp 0, pp 0)
        return self.tp_rank == 0 and self.pp_rank == 0

    # -- protocol --------------------------------------------------------------------------------
    def compute_log_probs(self, batch: Mapping[str, Any], with_entropy: bool = False) -> Any:
        t, a = self.plan.trainer, self.plan.architecture
        rows, seq, resp = self._shape(batch)
        mb = min(rows, t.log_prob_micro_batch_size)
        parts = {"lp_activations": M.layer_activation_bytes(a, seq, mb, t.tensor_parallel, t.sequence_parallel)}
        if self.last_stage:
            parts["lp_logits"] = M.logits_bytes(a, seq, mb, t.tensor_parallel, grad=False)
        if self.frozen and not self.on_device:
            self.book.violate("order", self.device_rank, "log_probs", "the reference computes log-probs while offloaded",
                              "a runtime defect: onload the reference before its pass")
        self._on("compute_log_probs", "log_probs")
        self.book.begin(self.device_rank, self.process, parts, "log_probs")
        self.book.end(self.device_rank, self.process, "log_probs")
        rows_out = rows if self._keeps_result() else 0
        lp = torch.zeros(rows_out, resp)
        return (lp, torch.zeros(rows_out, resp)) if with_entropy else lp

    def compute_values(self, batch: Mapping[str, Any]) -> Any:
        rows, _, resp = self._shape(batch)
        return torch.zeros(rows if self._keeps_result() else 0, resp)

    def update(self, batch: Mapping[str, Any]) -> dict[str, float]:
        t, a = self.plan.trainer, self.plan.architecture
        rows, seq, _ = self._shape(batch)
        parts = {"activations": M.stage_activation_bytes(a, seq, t.micro_batch_size, t.tensor_parallel,
                                                         t.pipeline_parallel, self.stage, t.gradient_accumulation,
                                                         t.recompute, t.sequence_parallel)}
        if self.last_stage:
            parts["logits"] = M.logits_bytes(a, seq, t.micro_batch_size, t.tensor_parallel, grad=True,
                                             entropy=self.plan.objective.entropy_coef > 0)
        self._on("update", "train")
        self.book.begin(self.device_rank, self.process, parts, "train")
        self.book.end(self.device_rank, self.process, "train")
        self.steps += 1
        return {"trainer/pg_loss": 0.0, "trainer/grad_norm": 1.0, "trainer/lr": float(self.plan.optim.lr),
                "trainer/entropy": 0.0, "trainer/kl": 0.0, "trainer/pg_clipfrac": 0.0, "trainer/ppo_kl": 0.0}

    def weight_names(self) -> list[str]:
        return hf_names(self.plan.architecture)

    def weight_stream(self, bucket_bytes: int) -> Iterator[WeightBucket]:
        """Every HF name once, in buckets; the tensors are one-element stand-ins (no real weights exist),
        the ledger is charged the gathered tensor and (source rank) the bucket while the stream runs."""
        a = self.plan.architecture
        parts = {"sync_buffers": M.largest_tensor_bytes(a) + (bucket_bytes if self.rank == 0 else 0)}
        self._on("weight_stream", "sync")
        self.book.begin(self.device_rank, self.process, parts, "sync")
        try:
            names = self.weight_names()
            size = max(1, len(names) // 8)
            for i in range(0, len(names), size):
                yield [(n, torch.zeros(1)) for n in names[i:i + size]]
        finally:
            self.book.end(self.device_rank, self.process, "sync")

    def offload(self) -> None:
        self._on("offload", "sync")
        if self.gpu:
            comps = ["reference"] if self.frozen else list(self.offloaded_parts)
            self.book.drop(self.device_rank, self.process, comps, "sync")
            self.on_device = not self.frozen

    def onload(self) -> None:
        self._on("onload", "log_probs")
        if not self.gpu:
            return
        if self.frozen:
            self.book.hold(self.device_rank, self.process, "reference", self.ref_bytes, "log_probs")
            self.on_device = True
        else:
            for k in self.offloaded_parts:
                self.book.hold(self.device_rank, self.process, k, self.state[k], "log_probs")

    def release_memory(self) -> None:
        self._on("release_memory", "sync")
        if self.gpu:
            self.book.release(self.device_rank, self.process, "sync")

    def save_checkpoint(self, folder: str) -> None:
        self._on("save_checkpoint", "checkpoint")
        Path(folder).mkdir(parents=True, exist_ok=True)
        name = ("reference" if self.frozen else "trainer") + f"_rank{self.rank:05d}.json"
        (Path(folder) / name).write_text(json.dumps({"steps": self.steps, "device": self.device_rank}))

    def load_checkpoint(self, folder: str) -> None:
        self._on("load_checkpoint", "checkpoint")
        self.steps = json.loads((Path(folder) / f"trainer_rank{self.rank:05d}.json").read_text())["steps"]

    def export_hf(self, path: str) -> None:
        self._on("export_hf", "export")
        self.book.begin(self.device_rank, self.process, {"sync_buffers": M.largest_tensor_bytes(self.plan.architecture)},
                        "export")
        self.book.end(self.device_rank, self.process, "export")
        if self.rank == 0:
            Path(path).mkdir(parents=True, exist_ok=True)
            (Path(path) / "config.json").write_text(json.dumps({"rehearsal": True, "names": len(self.weight_names())}))

    def close(self) -> None:
        """Nothing to tear down."""


# -- the generator --------------------------------------------------------------------------------------

class WorkerPlaceholder:
    """What vLLM's Ray executor would start for each TP rank of a replica: an actor asking for its share
    of the bundle's GPU (no model, no torch)."""

    def ready(self) -> str:
        return os.environ.get("CUDA_VISIBLE_DEVICES", "")


class RehearsalGenerator:
    """One generator replica (vLLM's memory: its reservation, what sleep releases) on its devices.

    Checks at start: the launch settings (`engine.backends.vllm_launch`), vLLM's own refusals (a TP
    world larger than the GPUs an executor can reach, fewer free bytes than ``utilization x total``),
    and, for the Ray executor, that its TP workers really schedule in the replica's bundles. Each
    ``generate`` checks the engine is awake and the request fits ``max_model_len``; responses are
    synthetic (one in ``long_every`` at the length limit), with log-prob 0 per token, as the stand-in
    trainer computes them.
    """

    def __init__(self, ctx: Any, shared_model: Any = None) -> None:
        from engine.backends.vllm_launch import replica_launch

        self.plan, self.ctx = ctx.plan, ctx
        self.book = Book(ctx.rehearsal.book)
        self.long_every = ctx.rehearsal.long_every
        self.replica = ctx.replica
        plan = self.plan
        ro = plan.rollout
        self.ranks = list(ro.replica_groups[self.replica])
        self.events: list[str] = []
        self.process = f"generator{self.replica}"
        self.gpu = plan.accelerator == "gpu"
        self.vllm = ro.backend == "vllm"
        self.launch = replica_launch(plan, self.replica)
        self.max_model_len = ro.max_model_len
        check_device(self.book, ctx.device, self.ranks[0], f"generator replica {self.replica}")
        self._check_launch()
        self._size()
        self.awake = {"weights": True, "kv_cache": True}
        self._start_memory()

    # -- start ---------------------------------------------------------------------------------
    def _check_launch(self) -> None:
        L, tp = self.launch, self.plan.rollout.tensor_parallel
        settings = {"executor": L.executor, "tensor_parallel": tp, "device_ranks": list(L.device_ranks),
                    "node": L.node, "bundle_indices": list(L.bundle_indices), "per_worker_gpus": L.per_worker_gpus,
                    "actor_gpus": L.actor_gpus, "env": dict(L.env), "max_model_len": self.max_model_len}
        self.book.launch(self.replica, settings)
        if not self.gpu:
            return
        seen = visible_gpus()
        in_ray = _in_ray_actor()
        if L.executor in ("uni", "mp") and tp > 1:
            self.book.violate("engine_args", self.ranks[0], "start",
                              f"generator replica {self.replica}: TP {tp} with the {L.executor} executor in one actor "
                              f"that sees {seen if seen is not None else 1} GPU: vLLM raises 'World size larger than the "
                              "number of available GPUs'", "a runtime defect: the Ray executor over the replica's bundles")
        if L.executor == "uni" and in_ray and seen == 0:
            self.book.violate("engine_args", self.ranks[0], "start",
                              f"generator replica {self.replica}: in-actor executor but the actor holds no GPU",
                              "a runtime defect: the replica's actor takes its share of the bundle's GPU")
        if L.executor == "ray":
            from engine.backends.vllm_generator import apply_launch_env

            self._schedule_tp_workers(in_ray)  # reads the environment the worker group gave the actor
            apply_launch_env(L)  # then, as the vLLM builder does before the engine starts

    def _schedule_tp_workers(self, in_ray: bool) -> None:
        """Start, as vLLM's Ray executor would, one actor per TP rank in the named bundles of the actor's
        placement group with the per-worker GPU share; a share the bundle cannot give is a violation."""
        L = self.launch
        if not in_ray:
            self.book.note(f"replica {self.replica}: simulated in this process; its TP workers' scheduling was not tried")
            return
        import ray
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        pg = ray.util.get_current_placement_group()
        if pg is None:
            self.book.violate("engine_args", self.ranks[0], "start",
                              f"generator replica {self.replica}: the Ray executor finds no current placement group "
                              "(vLLM would make its own, outside the plan's bundles)",
                              "a runtime defect: schedule the replica's actor with placement_group_capture_child_tasks")
            return
        env = os.environ
        want = env.get("VLLM_RAY_BUNDLE_INDICES", "")
        share = float(env.get("VLLM_RAY_PER_WORKER_GPUS", "1.0"))
        indices = [int(i) for i in want.split(",")] if want else []
        if indices != list(L.bundle_indices) or abs(share - L.per_worker_gpus) > 1e-9:
            self.book.violate("engine_args", self.ranks[0], "start",
                              f"generator replica {self.replica}: the actor's environment says bundles {want!r} x "
                              f"{share} GPU, the plan {list(L.bundle_indices)} x {L.per_worker_gpus}",
                              "a runtime defect: set VLLM_RAY_BUNDLE_INDICES / VLLM_RAY_PER_WORKER_GPUS before vLLM starts")
        specs = pg.bundle_specs
        bad = [i for i in indices if i >= len(specs) or not specs[i].get("GPU")]
        if len(set(indices)) != len(indices) or bad or len(indices) != self.plan.rollout.tensor_parallel:
            self.book.violate("engine_args", self.ranks[0], "start",
                              f"generator replica {self.replica}: bundle indices {indices} do not name "
                              f"{self.plan.rollout.tensor_parallel} distinct GPU bundles of its placement group",
                              "a runtime defect in engine.backends.vllm_launch")
            return
        actors = [ray.remote(WorkerPlaceholder).options(
            num_cpus=0, num_gpus=share, scheduling_strategy=PlacementGroupSchedulingStrategy(
                placement_group=pg, placement_group_bundle_index=i, placement_group_capture_child_tasks=True)).remote()
            for i in indices]
        ready, _ = ray.wait([a.ready.remote() for a in actors], num_returns=len(actors), timeout=120)
        if len(ready) < len(actors):
            self.book.violate("placement", self.ranks[0], "start",
                              f"generator replica {self.replica}: {len(actors) - len(ready)} of its {len(actors)} TP "
                              f"workers ({share} GPU each) could not be scheduled in bundles {indices} beside the "
                              "trainer's share", "a runtime defect: the GPU shares of a bundle must add up to at most 1")
        else:
            self.book.note(f"replica {self.replica}: vLLM's {len(actors)} TP workers scheduled in bundles {indices} "
                           f"({share:g} GPU each)")
        self._placeholders = actors

    def _size(self) -> None:
        ro, a, spec = self.plan.rollout, self.plan.architecture, self.plan.spec
        if not self.vllm:
            self.parts = {"generator_weights": 2.0 * M.total_params(a)}
            return
        cap = spec.cluster.gpu_memory_gib * M.GIB
        v = M.vllm_memory(a, ro.tensor_parallel, ro.gpu_memory_utilization, cap, max_num_seqs=ro.max_num_seqs,
                          enforce_eager=ro.enforce_eager)
        self.reservation = v.reservation
        self.parts = {"vllm_weights": v.weights, "vllm_activations": v.activations, "kv_cache": max(0.0, v.kv_cache)}
        self.fixed = {"cuda_graphs": v.cuda_graphs, "vllm_non_torch": v.non_torch, "generator_context": 0.5 * M.GIB}

    def _start_memory(self) -> None:
        if not self.gpu:
            return
        for r in self.ranks:
            self.book.call(r, self.process, "generator.start", "start")
            if self.vllm:
                free = self.book.free(r)
                if free + 1e-6 < self.reservation:
                    self.book.violate(
                        "vllm_start", r, "start",
                        f"generator replica {self.replica} on device {r}: vLLM needs gpu_memory_utilization x total = "
                        f"{self.reservation / M.GIB:.1f} GiB free at start, {free / M.GIB:.1f} GiB are free "
                        "(\"Free memory on device ... on startup is less than desired GPU memory utilization\")",
                        "start generators before the trainer builds (runtime), or rollout.gpu_memory_utilization (lower)")
                for k, v in {**self.fixed, **self.parts}.items():
                    self.book.hold(r, self.process, k, v, "start", False)
            else:
                for k, v in self.parts.items():
                    self.book.hold(r, self.process, k, v, "start", False)

    # -- protocol --------------------------------------------------------------------------------
    def generate(self, prompt_ids: list[list[int]], n: int, params: SamplingParams, seed: int) -> Generation:
        for r in self.ranks:
            self.book.call(r, self.process, "generator.generate", "generation")
        asleep = [k for k, v in self.awake.items() if not v]
        if asleep:
            self.book.violate("order", self.ranks[0], "generation",
                              f"generator replica {self.replica} asked to generate with {', '.join(asleep)} asleep",
                              "a runtime defect: wake the generator before sampling")
        longest = max((len(p) for p in prompt_ids), default=0) + params.max_new_tokens
        if self.vllm and longest > self.max_model_len:
            self.book.violate("engine_args", self.ranks[0], "generation",
                              f"a request of up to {longest} tokens (prompt + max_new_tokens {params.max_new_tokens}) "
                              f"exceeds the engine's max_model_len {self.max_model_len}: vLLM cuts or refuses it",
                              "the compiler's rollout.max_model_len must cover evaluation.max_response_length")
        rng = random.Random(seed)
        end = list(params.end_token_ids[:1])
        ids, reasons, texts, logps = [], [], [], []
        for i in range(len(prompt_ids) * n):
            if i % self.long_every == 0:
                length, reason = params.max_new_tokens, "length"
            else:
                length, reason = max(1, min(params.max_new_tokens, rng.randint(1, max(1, params.max_new_tokens // 8)))), "stop"
            toks = [1] * length
            if reason == "stop" and end:
                toks[-1] = end[0]
            ids.append(toks)
            reasons.append(reason)
            texts.append(f"so the answer is \\boxed{{{rng.randint(0, 9)}}}")
            if params.logprobs:
                logps.append([0.0] * length)
        return Generation(ids, reasons, texts, {"gen_time_s": 0.0, "gen_tokens": float(sum(map(len, ids)))},
                          log_probs=logps if params.logprobs else None)

    def update_weights(self, buckets: Iterable[WeightBucket], expected: Optional[Sequence[str]] = None) -> int:
        self.events.append("update_weights")
        for r in self.ranks:
            self.book.call(r, self.process, "generator.update_weights", "sync")
        if self.vllm and not self.awake["weights"]:
            self.book.violate("order", self.ranks[0], "sync", "weights streamed into a vLLM engine whose weights sleep",
                              "a runtime defect: wake(['weights']) before the push")
        received = [name for bucket in buckets for name, _ in bucket]
        if expected is not None:
            check_manifest(expected, received)
        self.reset_prefix_cache()
        return len(received)

    def receive_by_handles(self, channels: Sequence[Sequence[str]], expected: Optional[Sequence[str]] = None) -> int:
        """Takes the stream the stand-in handle senders checked (`RehearsalHandleSender`); each worker
        copies out of the mapped buffers into its woken weights (no buffer of its own)."""
        self.events.append("update_weights")
        if len(channels) != len(self.ranks):
            self.book.violate("placement", self.ranks[0], "sync", f"{len(channels)} handle channels for "
                              f"{len(self.ranks)} workers of generator replica {self.replica}",
                              "a runtime defect: one sending trainer rank per generator worker (plan.weight_sync.senders)")
        for r in self.ranks:
            self.book.call(r, self.process, "generator.receive_by_handles", "sync")
        if self.vllm and not self.awake["weights"]:
            self.book.violate("order", self.ranks[0], "sync", "weights handed to a vLLM engine whose weights sleep",
                              "a runtime defect: wake(['weights']) before the push")
        self.reset_prefix_cache()
        return len(expected or [])

    def join_broadcast(self, host: str, port: int, world_size: int, rank_offset: int = 1, backend: str = "gloo") -> Any:
        self.events.append("join_broadcast")
        return list(range(rank_offset, rank_offset + len(self.ranks)))

    def receive_weights(self, expected: Optional[Sequence[str]] = None) -> int:
        """Takes the stream the stand-in sender posted (`RehearsalSender`); the names were checked
        against the manifest at sending."""
        self.events.append("update_weights")
        for r in self.ranks:
            self.book.call(r, self.process, "generator.receive_weights", "sync")
            if self.gpu:  # one received tensor at a time, copied into the woken weights
                self.book.begin(r, self.process, {"sync_buffers": M.largest_tensor_bytes(self.plan.architecture)}, "sync")
                self.book.end(r, self.process, "sync")
        if self.vllm and not self.awake["weights"]:
            self.book.violate("order", self.ranks[0], "sync", "weights broadcast into a vLLM engine whose weights sleep",
                              "a runtime defect: wake(['weights']) before the push")
        self.reset_prefix_cache()
        return len(expected or [])

    def sleep(self, level: int = 1) -> None:
        self.events.append(f"sleep({level})")
        for r in self.ranks:
            self.book.call(r, self.process, f"generator.sleep({level})", "generation")
        if not (self.gpu and self.vllm) or level == 0:
            return
        self.awake = {"weights": False, "kv_cache": False}
        for r in self.ranks:
            self.book.drop(r, self.process, list(self.parts), "generation")

    def wake(self, tags: Optional[Sequence[str]] = None) -> None:
        tags = list(tags) if tags else ["weights", "kv_cache"]
        self.events.append("wake(" + ",".join(tags) + ")")
        for r in self.ranks:
            self.book.call(r, self.process, "generator.wake(" + ",".join(tags) + ")", _WAKE_PHASE[tags[-1]])
        if not (self.gpu and self.vllm):
            return
        for tag in tags:
            self.awake[tag] = True
            comps = {"weights": ["vllm_weights"], "kv_cache": ["kv_cache", "vllm_activations"]}[tag]
            for r in self.ranks:
                for c in comps:
                    self.book.hold(r, self.process, c, self.parts[c], _WAKE_PHASE[tag], False)

    def reset_prefix_cache(self) -> None:
        self.events.append("reset_prefix_cache")

    def close(self) -> None:
        for a in getattr(self, "_placeholders", []):
            try:
                import ray

                ray.kill(a)
            except Exception:
                pass


#: The step phase a generator's wake belongs to: the weights wake for the push, the KV cache for sampling.
_WAKE_PHASE = {"weights": "sync", "kv_cache": "generation"}


class RehearsalSender:
    """Trainer rank 0's side of a weight broadcast, in a rehearsal: the stream runs (the trainer's
    buffers are charged by its `weight_stream`), its names are checked against the manifest, and nothing
    is sent (the stand-in receivers take the count)."""

    def __init__(self, names: Sequence[str]) -> None:
        self.names = list(names)

    def send(self, stream: Iterable[WeightBucket]) -> int:
        sent = [name for bucket in stream for name, _ in bucket]
        check_manifest(self.names, sent)
        return len(sent)


class RehearsalHandleSender:
    """A trainer rank's side of the colocated sync by handles, in a rehearsal: while the stream runs
    its device is charged the plan's handle buffers (``weight_sync.buffers`` x ``buffer_bytes``, on
    top of what the trainer's `weight_stream` charges), the names are checked against the manifest,
    and nothing is sent (the stand-in receivers take the count)."""

    def __init__(self, ctx: Any, names: Sequence[str], buffer_bytes: int, buffers: int) -> None:
        self.book = Book(ctx.rehearsal.book)
        self.names = list(names)
        self.device_rank = ctx.device_rank if ctx.device_rank is not None else ctx.plan.trainer.ranks[ctx.rank]
        self.nbytes = float(buffers * buffer_bytes) if ctx.plan.accelerator == "gpu" else 0.0
        self.channel = (f"rehearsal:{self.device_rank}", "")

    def send(self, stream: Iterable[WeightBucket], names: Optional[Sequence[str]] = None, **_: Any) -> int:
        self.book.call(self.device_rank, "trainer", "handles.send", "sync")
        self.book.begin(self.device_rank, "trainer", {"handle_buffers": self.nbytes}, "sync")
        try:
            sent = [name for bucket in stream for name, _ in bucket]
        finally:
            self.book.end(self.device_rank, "trainer", "sync")
        check_manifest(self.names, sent)
        return len(sent)

    def close(self) -> None:
        """Nothing to release."""


def _in_ray_actor() -> bool:
    try:
        import ray

        return ray.is_initialized() and ray.get_runtime_context().get_actor_id() is not None
    except Exception:
        return False


def build_trainer(ctx: Any) -> RehearsalTrainer:
    """The registry's rehearsal builder for the trainer role."""
    return RehearsalTrainer(ctx)


def build_generator(ctx: Any, shared_model: Any = None) -> RehearsalGenerator:
    """The registry's rehearsal builder for the generator role."""
    return RehearsalGenerator(ctx, shared_model)
