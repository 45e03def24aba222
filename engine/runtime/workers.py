"""The role workers: trainer (one rank of the trainer group, which also holds the reference policy in the
same layout), generator, reward.

Each worker is a plain class built from a `WorkerSetup` (the plan as JSON plus resolved local paths),
so the same class runs in-process (the embedded default) or as a Ray actor (`engine.runtime.group`).
Backends come from the plan through `engine.backends.registry`; workers hold them as the
`engine.backends.base` protocols and never branch on a backend name.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Any, Optional, Sequence

import torch

from engine.backends.base import Generation, Generator, SamplingParams, Trainer
from engine.backends.registry import BackendContext, build_generator, build_trainer


@dataclass(frozen=True)
class WorkerSetup:
    """What every worker needs: the plan (JSON), the base model and tokenizer folders, the device.

    device: "cpu" or "cuda[:i]"; threads: torch intra-op threads on CPU (None = leave as is).
    """

    plan_json: str
    model_path: str
    tokenizer_path: str
    device: str = "cpu"
    threads: Optional[int] = None

    def plan(self):
        from compiler.plan import Plan

        return Plan.from_json(self.plan_json)


def _prepare(setup: WorkerSetup) -> None:
    if setup.threads and setup.device == "cpu":
        torch.set_num_threads(setup.threads)


def _init_distributed(rank: int, world: int, init_method: Optional[str], device: str) -> None:
    """Join the trainer group's torch.distributed world (gloo on CPU, NCCL on GPU)."""
    if world <= 1 or torch.distributed.is_initialized():
        return
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
    torch.distributed.init_process_group(backend, init_method=init_method, rank=rank, world_size=world)


class GeneratorCalls:
    """The generator's calls as a worker offers them to the driver, for any worker holding one in
    ``self.generator`` (a trainer rank that hosts it, or a replica of its own)."""

    generator: Optional[Generator]

    def generate(self, prompt_ids: list[list[int]], n: int, params: SamplingParams, seed: int) -> Generation:
        return self.generator.generate(prompt_ids, n, params, seed)

    def generator_events(self) -> list[str]:
        """The calls the generator recorded, when its backend records them (vLLM)."""
        return list(getattr(self.generator, "events", []))

    def generator_sleep(self, level: int) -> None:
        self.generator.sleep(level)

    def generator_wake(self, tags: Optional[Sequence[str]] = None) -> None:
        self.generator.wake(tags)

    def reset_prefix_cache(self) -> None:
        self.generator.reset_prefix_cache()


class TrainerWorker(GeneratorCalls):
    """One rank of the trainer role. With ``hosts_generator`` (CPU runs, one GPU) it also holds the
    generator, so weight sync stays in this process: the trainer's stream feeds the generator
    directly (the hf generator on a torch trainer even shares its module)."""

    def __init__(self, setup: WorkerSetup, rank: int = 0, world: int = 1, hosts_generator: bool = False,
                 hosts_reference: bool = False) -> None:
        """Cheap: nothing is loaded until `start` (the group first agrees on a rendezvous address)."""
        _prepare(setup)
        self.setup, self.rank, self.world = setup, rank, world
        self.hosts_generator, self.hosts_reference = hosts_generator, hosts_reference
        self.trainer: Optional[Trainer] = None
        self.reference: Optional[Trainer] = None
        self.generator: Optional[Generator] = None

    def rendezvous(self) -> str:
        """A ``tcp://host:port`` on this worker's host for the group's torch.distributed init (rank 0)."""
        import socket

        from engine.runtime.group import free_port

        host = "127.0.0.1" if self.setup.device == "cpu" else socket.gethostbyname(socket.gethostname())
        return f"tcp://{host}:{free_port()}"

    def start(self, init_method: Optional[str] = None) -> None:
        """Join the trainer group and build the backends (every rank at once)."""
        _init_distributed(self.rank, self.world, init_method, self.setup.device)
        setup = self.setup
        self.plan = setup.plan()
        ctx = BackendContext(self.plan, setup.model_path, setup.tokenizer_path, setup.device, self.rank, self.world)
        self.trainer = build_trainer(ctx)
        # the reference policy: the base model, frozen, with the trainer's backend and layout
        self.reference = build_trainer(replace(ctx, frozen=True)) if self.hosts_reference else None
        if self.hosts_generator:
            # the generator starts without weights of its own: the first sync brings the trainer's
            hf_module = getattr(self.trainer, "hf_module", None)
            shared = hf_module() if callable(hf_module) and self.plan.rollout.backend == "hf" else None
            self.generator = build_generator(replace(ctx, dummy_weights=True), shared)

    # -- trainer ------------------------------------------------------------------------------------
    def compute_log_probs(self, batch: dict, with_entropy: bool = False) -> Any:
        return self.trainer.compute_log_probs(batch, with_entropy)

    def compute_ref_log_probs(self, batch: dict) -> torch.Tensor:
        return self.reference.compute_log_probs(batch)

    def compute_values(self, batch: dict) -> torch.Tensor:
        return self.trainer.compute_values(batch)

    def update(self, batch: dict) -> dict[str, float]:
        return self.trainer.update(batch)

    def weight_names(self) -> list[str]:
        return self.trainer.weight_names()

    def offload(self) -> None:
        self.trainer.offload()

    def onload(self) -> None:
        self.trainer.onload()

    def save_checkpoint(self, folder: str) -> None:
        self.trainer.save_checkpoint(folder)

    def load_checkpoint(self, folder: str) -> None:
        self.trainer.load_checkpoint(folder)

    def export_hf(self, path: str) -> None:
        self.trainer.export_hf(path)

    # -- the hosted generator -----------------------------------------------------------------------
    def push_weights(self, bucket_bytes: int, skip: Sequence[str] = ()) -> int:
        """Stream the trainer's weights into the hosted generator (every rank takes part: the stream
        gathers TP shards and PP stages). ``skip``: names left out on purpose (tests of the parity
        gate). Returns the tensors the generator received (0 on ranks without one)."""
        names = self.trainer.weight_names()
        stream = self.trainer.weight_stream(bucket_bytes)
        if skip:
            stream = ([(n, t) for n, t in bucket if n not in skip] for bucket in stream)
        if self.generator is None:
            for _ in stream:  # take part in the collectives, keep nothing
                pass
            return 0
        return self.generator.update_weights(stream, expected=None if skip else names)

    def open_broadcast(self, host: str, port: int, world_size: int) -> None:
        """Rank 0 opens the weight broadcast group it sends on (the generator workers
        join it at the same time); other ranks have nothing to open."""
        from engine.backends.weight_transfer import BroadcastGroup

        if self.rank == 0:
            backend = self.plan.weight_sync.backend
            device = self.setup.device if backend == "nccl" else "cpu"
            self.broadcast = BroadcastGroup(host, port, world_size, 0, backend, device=device)

    def broadcast_weights(self, bucket_bytes: int) -> int:
        """The weight stream (every rank takes part in its gathers), sent by rank 0 to
        every generator worker. Returns the tensors sent (0 on other ranks)."""
        stream = self.trainer.weight_stream(bucket_bytes)
        if self.rank != 0:
            for _ in stream:
                pass
            return 0
        return self.broadcast.send(stream)


    def close(self) -> None:
        _close(self.generator)
        _close(self.trainer)  # Megatron's process groups, so a later run in this process starts clean
        if torch.distributed.is_initialized() and self.world > 1:
            torch.distributed.destroy_process_group()

    def ping(self) -> dict[str, Any]:
        """Where this rank runs: pid, rank, and the accelerator ids Ray gave it (empty without Ray)."""
        return {"role": "trainer", "rank": self.rank, "pid": os.getpid(), "gpu_ids": _ray_gpu_ids()}


def _close(backend: Any) -> None:
    """Stop a backend's engine processes now (vLLM's ``shutdown``), not at garbage collection."""
    for name in ("shutdown", "close"):
        stop = getattr(backend, name, None)
        if callable(stop):
            stop()
            return


def _ray_gpu_ids() -> list[str]:
    try:
        import ray

        return [str(g) for g in ray.get_gpu_ids()] if ray.is_initialized() else []
    except Exception:
        return []


class GeneratorWorker(GeneratorCalls):
    """A generator replica in its own worker (GPU replicas, split placement)."""

    def __init__(self, setup: WorkerSetup, replica: int = 0, dummy_weights: bool = False) -> None:
        """``dummy_weights``: start without loading the model's weights (a training run's first sync
        brings the trainer's)."""
        _prepare(setup)
        plan = setup.plan()
        self.replica, self.device = replica, setup.device
        self.generator: Generator = build_generator(BackendContext(plan, setup.model_path, setup.tokenizer_path,
                                                                   setup.device, dummy_weights=dummy_weights))

    def update_weights(self, buckets, expected=None) -> int:
        return self.generator.update_weights(buckets, expected)

    def join_broadcast(self, host: str, port: int, world_size: int, rank_offset: int, backend: str) -> None:
        """This replica's workers join trainer rank 0's weight broadcast group."""
        self.generator.join_broadcast(host, port, world_size, rank_offset, backend)

    def receive_weights(self, expected) -> int:
        """One weight stream from the broadcast group, checked against ``expected``."""
        return self.generator.receive_weights(expected)


    def close(self) -> None:
        _close(self.generator)

    def ping(self) -> dict[str, Any]:
        return {"role": "generator", "replica": self.replica, "pid": os.getpid(), "gpu_ids": _ray_gpu_ids()}


class RewardWorker:
    """The reward role: rule-based grading with `engine.reward.Grader` (its own process pool)."""

    def __init__(self, setup: WorkerSetup, end_tokens: tuple[str, ...] = ()) -> None:
        from engine.reward import Grader, RewardConfig

        r = setup.plan().spec.reward
        cfg = RewardConfig(format=r.format, timeout_s=r.timeout_s, workers=r.workers, correct=r.correct,
                           wrong=r.wrong, format_penalty=r.format_penalty)
        self.grader = Grader(cfg, end_tokens=end_tokens)

    def grade(self, responses: list[str], ground_truths: list[str]) -> dict[str, list]:
        """Rewards and verdicts, one per response."""
        res = self.grader.grade_batch(responses, ground_truths)
        return {"reward": [r.reward for r in res], "correct": [bool(r.correct) for r in res],
                "boxed": [bool(r.boxed) for r in res], "status": [r.status for r in res],
                "extracted": [r.extracted for r in res]}

    def stats(self) -> dict[str, int]:
        return dict(self.grader.stats())

    def close(self) -> None:
        self.grader.close()

    def ping(self) -> dict[str, Any]:
        return {"role": "reward", "pid": os.getpid(), "gpu_ids": []}
