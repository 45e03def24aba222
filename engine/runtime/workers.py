"""The role workers: trainer (one rank of the trainer group, which also holds the reference policy in the
same layout), generator, reward.

Each worker is a plain class built from a `WorkerSetup` (the plan as JSON plus resolved local paths),
so the same class runs in-process (the embedded default) or as a Ray actor (`engine.runtime.group`).
Backends come from the plan through `engine.backends.registry`; workers hold them as the
`engine.backends.base` protocols (optional abilities through its capability protocols) and never
branch on a backend name. How the driver calls each method across a role's ranks is declared once,
on the method, with `engine.runtime.dispatch.dispatch`.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, replace
from typing import Any, Optional, Sequence

import torch

from compiler.backends import backend
from engine.backends.base import (BroadcastReceiver, Generation, Generator, ReceivesHandles, RecordsEvents, SamplingParams,
                                  SharesModule, Trainer, ValueModel)
from engine.backends.device import parse_device
from engine.backends.registry import BackendContext, build_generator, build_handle_sender, build_trainer, build_weight_sender
from engine.core.allocator import keep_freed_memory
from engine.runtime.dispatch import Mode, dispatch


@dataclass(frozen=True)
class WorkerSetup:
    """What every worker needs: the plan (JSON), the base model and tokenizer folders, the device.

    device: "cpu" or "cuda:<local index>" (`engine.backends.device.parse_device` checks it); threads:
    torch intra-op threads on CPU (None = leave as is). shared_paths: folders every worker must see
    on its own node (model, tokenizer, run folder: a multi-node run needs them on a shared
    filesystem). rehearsal: the rehearsal's stand-in settings (`engine.rehearse`), None in a real run.
    """

    plan_json: str
    model_path: str
    tokenizer_path: str
    device: str = "cpu"
    threads: Optional[int] = None
    shared_paths: tuple[str, ...] = ()
    rehearsal: Optional[Any] = None

    def plan(self):
        from compiler.plan import Plan

        return Plan.from_json(self.plan_json)


class SharedPathError(RuntimeError):
    """A worker's node does not see a folder the run needs (no shared filesystem)."""


def node_address() -> str:
    """This process's address for rendezvous and weight broadcasts: the Ray node IP under Ray (what peers
    on other nodes reach), else loopback. Never ``gethostbyname(gethostname())``, which is 127.0.1.1 on
    stock images."""
    try:
        import ray

        if ray.is_initialized():
            return ray.util.get_node_ip_address()
    except Exception:
        pass
    return "127.0.0.1"


def check_shared_paths(paths: Sequence[str]) -> None:
    """Raise `SharedPathError` naming each of ``paths`` this node does not see."""
    missing = [p for p in paths if p and not os.path.exists(p)]
    if missing:
        raise SharedPathError(
            f"node {node_address()} (pid {os.getpid()}) does not see {', '.join(missing)}: the model, tokenizer and "
            "run folder must be on a filesystem every node mounts at the same path (see README, Cluster prerequisites)")


def _drain(stream: Any) -> int:
    """Run a weight stream to its end keeping nothing (a rank that feeds no generator still takes part in
    the stream's gathers); 0 tensors sent."""
    for _ in stream:
        pass
    return 0


def _prepare(setup: WorkerSetup, network_interface: Optional[str] = None) -> None:
    """Per-process set-up before any backend: threads, the network interface of gloo/NCCL, the shared-path check."""
    if setup.threads and setup.device == "cpu":
        torch.set_num_threads(setup.threads)
    if setup.device == "cpu":
        keep_freed_memory()  # a step's activations reuse the last step's heap, not fresh pages
    if network_interface:
        os.environ.setdefault("GLOO_SOCKET_IFNAME", network_interface)
        os.environ.setdefault("NCCL_SOCKET_IFNAME", network_interface)
    check_shared_paths(setup.shared_paths)


def _init_distributed(rank: int, world: int, init_method: Optional[str], device: str) -> None:
    """Join the trainer group's torch.distributed world (gloo on CPU, NCCL on GPU)."""
    if world <= 1 or torch.distributed.is_initialized():
        return
    d = parse_device(device)
    backend = "nccl" if d.type == "cuda" else "gloo"
    if d.type == "cuda":
        torch.cuda.set_device(d)
    torch.distributed.init_process_group(backend, init_method=init_method, rank=rank, world_size=world)


class GeneratorCalls:
    """The generator's calls as a worker offers them to the driver, for any worker holding one in
    ``self.generator`` (a trainer rank that hosts it, or a replica of its own)."""

    generator: Optional[Generator]

    @dispatch(Mode.EACH)
    def generate(self, prompt_ids: list[list[int]], n: int, params: SamplingParams, seed: int) -> Generation:
        return self.generator.generate(prompt_ids, n, params, seed)

    @dispatch(Mode.ALL)
    def generator_events(self) -> list[str]:
        """The calls the generator recorded, when its backend records them (vLLM)."""
        return list(self.generator.events) if isinstance(self.generator, RecordsEvents) else []

    @dispatch(Mode.ALL)
    def generator_sleep(self, level: int) -> None:
        self.generator.sleep(level)

    @dispatch(Mode.ALL)
    def generator_wake(self, tags: Optional[Sequence[str]] = None) -> None:
        self.generator.wake(tags)

    @dispatch(Mode.ALL)
    def reset_prefix_cache(self) -> None:
        self.generator.reset_prefix_cache()


class TrainerWorker(GeneratorCalls):
    """One rank of the trainer role. With ``hosts_generator`` (CPU runs, one GPU) it also holds the
    generator, so weight sync stays in this process: the trainer's stream feeds the generator
    directly (the hf generator on a torch trainer even shares its module)."""

    def __init__(self, setup: WorkerSetup, rank: int = 0, world: int = 1, hosts_generator: bool = False,
                 hosts_reference: bool = False, device_rank: Optional[int] = None) -> None:
        """Cheap: nothing is loaded until `start` (the group first agrees on a rendezvous address).
        ``device_rank``: the plan's global device rank this trainer rank runs on."""
        self.setup, self.rank, self.world = setup, rank, world
        self.plan = setup.plan()
        _prepare(setup, self.plan.spec.cluster.network_interface)
        self.device = str(parse_device(setup.device))
        self.device_rank = device_rank
        self.hosts_generator, self.hosts_reference = hosts_generator, hosts_reference
        self.trainer: Optional[Trainer] = None
        self.reference: Optional[Trainer] = None
        self.generator: Optional[Generator] = None

    @dispatch(Mode.RANK0)
    def rendezvous(self) -> str:
        """A ``tcp://host:port`` for the group's torch.distributed init (rank 0): this node's Ray IP."""
        from engine.runtime.group import free_port

        return f"tcp://{node_address()}:{free_port()}"

    def _ctx(self) -> BackendContext:
        s = self.setup
        return BackendContext(self.plan, s.model_path, s.tokenizer_path, self.device, self.rank, self.world,
                              rehearsal=s.rehearsal, device_rank=self.device_rank)

    @dispatch(Mode.ALL)
    def start(self, init_method: Optional[str] = None) -> None:
        """Join the trainer group and build the backends (every rank at once). A hosted generator that
        keeps its own weights (vLLM) is built first: it reserves its share of the device while the
        device is still free (vLLM refuses to start on less than ``gpu_memory_utilization`` x total)."""
        if self.setup.rehearsal is None:  # a rehearsal's ranks form no torch.distributed world
            _init_distributed(self.rank, self.world, init_method, self.device)
        ctx = self._ctx()
        shares = backend("generator", self.plan.rollout.backend).shared_module  # samples from the trainer's module
        if self.hosts_generator and not shares:
            self.generator = build_generator(replace(ctx, dummy_weights=True))
        self.trainer = build_trainer(ctx)
        # the reference policy: the base model, frozen, with the trainer's backend and layout
        self.reference = build_trainer(replace(ctx, frozen=True)) if self.hosts_reference else None
        if self.hosts_generator and shares:
            # the generator starts without weights of its own: the first sync brings the trainer's
            module = self.trainer.hf_module() if isinstance(self.trainer, SharesModule) else None
            self.generator = build_generator(replace(ctx, dummy_weights=True), module)

    # -- trainer ------------------------------------------------------------------------------------
    @dispatch(Mode.DP_SHARD)
    def compute_log_probs(self, batch: dict, with_entropy: bool = False) -> Any:
        return self.trainer.compute_log_probs(batch, with_entropy)

    @dispatch(Mode.DP_SHARD)
    def compute_ref_log_probs(self, batch: dict) -> torch.Tensor:
        return self.reference.compute_log_probs(batch)

    @dispatch(Mode.DP_SHARD)
    def compute_values(self, batch: dict) -> torch.Tensor:
        if not isinstance(self.trainer, ValueModel):
            raise TypeError(f"the {self.plan.trainer.backend} trainer has no critic (compute_values)")
        return self.trainer.compute_values(batch)

    @dispatch(Mode.DP_SHARD)
    def update(self, batch: dict) -> dict[str, float]:
        return self.trainer.update(batch)

    @dispatch(Mode.RANK0)
    def weight_names(self) -> list[str]:
        return self.trainer.weight_names()

    def _models(self, which: Sequence[str]) -> list[Trainer]:
        chosen = {"trainer": self.trainer, "reference": self.reference}
        return [chosen[w] for w in which if chosen[w] is not None]

    @dispatch(Mode.ALL)
    def offload(self, which: Sequence[str] = ("trainer", "reference")) -> None:
        """``which`` of the trainer and the reference off the device (the memory model offloads both)."""
        for model in self._models(which):
            model.offload()

    @dispatch(Mode.ALL)
    def onload(self, which: Sequence[str] = ("trainer", "reference")) -> None:
        for model in self._models(which):
            model.onload()

    @dispatch(Mode.ALL)
    def release_memory(self) -> None:
        """Hand cached, unused accelerator memory back (before the weight push and the KV-cache wake)."""
        for model in (self.trainer, self.reference):
            if model is not None:
                model.release_memory()

    @dispatch(Mode.ALL)
    def save_checkpoint(self, folder: str) -> None:
        self.trainer.save_checkpoint(folder)

    @dispatch(Mode.ALL)
    def load_checkpoint(self, folder: str) -> None:
        self.trainer.load_checkpoint(folder)

    @dispatch(Mode.ALL)
    def export_hf(self, path: str) -> None:
        self.trainer.export_hf(path)

    # -- the hosted generator -----------------------------------------------------------------------
    @dispatch(Mode.ALL)
    def push_weights(self, bucket_bytes: int, skip: Sequence[str] = ()) -> int:
        """Stream the trainer's weights into the hosted generator (every rank takes part: the stream
        gathers TP shards and PP stages). ``skip``: names left out on purpose (tests of the parity
        gate). Returns the tensors the generator received (0 on ranks without one)."""
        names = self.trainer.weight_names()
        stream = self._stream(bucket_bytes, skip)
        if self.generator is None:
            return _drain(stream)
        return self.generator.update_weights(stream, expected=None if skip else names)

    def _stream(self, bucket_bytes: int, skip: Sequence[str] = ()) -> Any:
        """The trainer's weight stream without the names in ``skip``."""
        stream = self.trainer.weight_stream(bucket_bytes)
        if skip:
            stream = ([(n, t) for n, t in bucket if n not in skip] for bucket in stream)
        return stream

    @dispatch(Mode.ALL)
    def open_handles(self) -> Optional[tuple[str, str]]:
        """The channel (socket path, key) of this rank's handle sender when the plan has it feed the
        generator worker on its device (``weight_sync.senders``), opened on the first call; None on
        the other ranks."""
        if self.device_rank not in self.plan.weight_sync.senders:
            return None
        if getattr(self, "handles", None) is None:
            self.handles = build_handle_sender(self._ctx(), self.trainer.weight_names())
        return tuple(self.handles.channel)

    @dispatch(Mode.ALL)
    def send_by_handles(self, bucket_bytes: int, skip: Sequence[str] = ()) -> int:
        """The weight stream (every rank takes part in its gathers), handed by each sending rank to the
        generator worker on its device (which is receiving: `GeneratorWorker.receive_by_handles`).
        Returns the tensors sent (0 on ranks that feed no worker)."""
        stream = self._stream(bucket_bytes, skip)
        if getattr(self, "handles", None) is None:
            return _drain(stream)
        return self.handles.send(stream)

    @dispatch(Mode.ALL)
    def push_by_handles(self, bucket_bytes: int, skip: Sequence[str] = ()) -> int:
        """`send_by_handles` to the generator this rank hosts (``weight_sync.in_trainer``): its workers
        map the buffers from a thread of this process while this thread packs them, the same channel
        and handles as between processes. Returns the tensors the generator received (0 without one)."""
        channel = self.open_handles()
        if self.generator is None or channel is None:
            return self.send_by_handles(bucket_bytes, skip)
        if not isinstance(self.generator, ReceivesHandles):
            raise TypeError(f"the {self.plan.rollout.backend} generator cannot take weights by handles")
        expected = None if skip else self.trainer.weight_names()
        outcome: dict[str, Any] = {}

        def receive() -> None:
            try:
                outcome["received"] = self.generator.receive_by_handles([channel], expected)
            except BaseException as e:  # raised below, in the caller's thread
                outcome["error"] = e

        receiver = threading.Thread(target=receive, name="weight-handles", daemon=True)
        receiver.start()
        try:
            self.handles.send(self._stream(bucket_bytes, skip), alive=receiver.is_alive)
        except BaseException:
            receiver.join(timeout=60)  # the closed channel ends its wait (one that never connected may not)
            if "error" in outcome:  # the receiver's failure is the cause (e.g. a manifest mismatch)
                raise outcome["error"]
            raise
        receiver.join()
        if "error" in outcome:
            raise outcome["error"]
        return outcome["received"]

    @dispatch(Mode.ALL)
    def open_broadcast(self, host: str, port: int, world_size: int) -> None:
        """Rank 0 opens the weight broadcast group it sends on (the generator workers
        join it at the same time); other ranks have nothing to open."""
        if self.rank == 0:
            self.broadcast = build_weight_sender(self._ctx(), host, port, world_size, self.trainer.weight_names())

    @dispatch(Mode.ALL)
    def broadcast_weights(self, bucket_bytes: int) -> int:
        """The weight stream (every rank takes part in its gathers), sent by rank 0 to
        every generator worker. Returns the tensors sent (0 on other ranks)."""
        stream = self.trainer.weight_stream(bucket_bytes)
        if self.rank != 0:
            return _drain(stream)
        return self.broadcast.send(stream)

    @dispatch(Mode.ALL)
    def close(self) -> None:
        handles = getattr(self, "handles", None)
        if handles is not None:
            handles.close()
        for backend in (self.generator, self.reference, self.trainer):
            if backend is not None:  # Megatron's process groups, vLLM's processes: torn down now
                backend.close()
        if torch.distributed.is_initialized() and self.world > 1:
            torch.distributed.destroy_process_group()

    @dispatch(Mode.ALL)
    def ping(self) -> dict[str, Any]:
        """Where this rank runs: pid, rank, and the accelerator ids Ray gave it (empty without Ray)."""
        return {"role": "trainer", "rank": self.rank, "pid": os.getpid(), "gpu_ids": _ray_gpu_ids()}


def _ray_gpu_ids() -> list[str]:
    try:
        import ray

        return [str(g) for g in ray.get_gpu_ids()] if ray.is_initialized() else []
    except Exception:
        return []


class GeneratorWorker(GeneratorCalls):
    """A generator replica in its own worker (GPU replicas, split placement)."""

    def __init__(self, setup: WorkerSetup, replica: int = 0, dummy_weights: bool = False,
                 device_rank: Optional[int] = None) -> None:
        """``dummy_weights``: start without loading the model's weights (a training run's first sync
        brings the trainer's). ``device_rank``: the plan's device rank of the replica's first TP worker."""
        plan = setup.plan()
        _prepare(setup, plan.spec.cluster.network_interface)
        self.replica, self.device = replica, str(parse_device(setup.device))
        ctx = BackendContext(plan, setup.model_path, setup.tokenizer_path, self.device, dummy_weights=dummy_weights,
                             rehearsal=setup.rehearsal, device_rank=device_rank, replica=replica)
        self.generator: Generator = build_generator(ctx)

    @dispatch(Mode.ALL)
    def update_weights(self, buckets, expected=None) -> int:
        return self.generator.update_weights(buckets, expected)

    def _receiver(self) -> BroadcastReceiver:
        if not isinstance(self.generator, BroadcastReceiver):
            raise TypeError(f"generator replica {self.replica} cannot join a weight broadcast group")
        return self.generator

    @dispatch(Mode.EACH)
    def receive_by_handles(self, channels: Sequence[Sequence[str]], expected=None) -> int:
        """Colocated: this replica's workers map one weight stream from the trainer ranks on their
        devices (``channels``: one (socket path, key) per TP rank), checked against ``expected``."""
        if not isinstance(self.generator, ReceivesHandles):
            raise TypeError(f"generator replica {self.replica} cannot take weights by handles")
        return self.generator.receive_by_handles(channels, expected)

    @dispatch(Mode.EACH)
    def join_broadcast(self, host: str, port: int, world_size: int, rank_offset: int, backend: str) -> None:
        """This replica's workers join trainer rank 0's weight broadcast group."""
        self._receiver().join_broadcast(host, port, world_size, rank_offset, backend)

    @dispatch(Mode.ALL)
    def receive_weights(self, expected) -> int:
        """One weight stream from the broadcast group, checked against ``expected``."""
        return self._receiver().receive_weights(expected)

    @dispatch(Mode.ALL)
    def close(self) -> None:
        self.generator.close()

    @dispatch(Mode.ALL)
    def ping(self) -> dict[str, Any]:
        return {"role": "generator", "replica": self.replica, "pid": os.getpid(), "gpu_ids": _ray_gpu_ids()}


class RewardWorker:
    """The reward role: rule-based grading with `engine.reward.Grader` (its own process pool)."""

    def __init__(self, setup: WorkerSetup, end_tokens: tuple[str, ...] = ()) -> None:
        from engine.reward import Grader, RewardConfig

        r = setup.plan().reward
        cfg = RewardConfig(format=r.format, timeout_s=r.timeout_s, workers=r.workers, correct=r.correct,
                           wrong=r.wrong, format_penalty=r.format_penalty)
        self.grader = Grader(cfg, end_tokens=end_tokens)

    @dispatch(Mode.RANK0)
    def grade(self, responses: list[str], ground_truths: list[str]) -> dict[str, list]:
        """Rewards and verdicts, one per response."""
        res = self.grader.grade_batch(responses, ground_truths)
        return {"reward": [r.reward for r in res], "correct": [bool(r.correct) for r in res],
                "boxed": [bool(r.boxed) for r in res], "status": [r.status for r in res],
                "extracted": [r.extracted for r in res]}

    @dispatch(Mode.RANK0)
    def stats(self) -> dict[str, int]:
        return dict(self.grader.stats())

    @dispatch(Mode.ALL)
    def close(self) -> None:
        self.grader.close()

    @dispatch(Mode.ALL)
    def ping(self) -> dict[str, Any]:
        return {"role": "reward", "pid": os.getpid(), "gpu_ids": []}
