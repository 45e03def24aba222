"""The `Plan`: what the compiler hands the runtime. A plain, serialisable, hashed value.

The runtime executes a Plan and never re-reads YAML or makes placement decisions: everything it
needs (the resolved spec, backends, parallel sizes, which device holds which role) is here.
"""

from __future__ import annotations

import hashlib
import json
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

from schemas import Architecture, ExperimentSpec

#: Bumped whenever a field the runtime reads changes; `Plan.from_json` refuses other versions.
PLAN_VERSION = 3

#: Plan fields the runtime does not act on: estimates, explanations and derived values kept for
#: people (`engine plan`) and for the compiler's own checks. Every other field is executed (a test
#: checks that the runtime reads it). Dotted paths; a list's items are addressed through its name.
INFORMATIONAL = frozenset({
    "version", "sources", "reasons", "notes", "nodes", "gpus_per_node", "estimates",
    "devices.node", "devices.index", "devices.roles", "devices.memory_gib", "devices.capacity_gib",
    "devices.stage", "devices.trainer_rank", "devices.mesh.tp", "devices.mesh.pp", "devices.replica",
    "devices.peak_phase", "devices.phases_gib",
    "trainer.gradient_accumulation",
    "rollout.replicas", "rollout.kv_cache_tokens", "rollout.concurrency",
    "weight_sync.source_rank", "bundles.node", "bundles.index",
})

Role = Literal["trainer", "generator", "reference", "critic", "reward"]


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MeshCoords(_Frozen):
    """A trainer device's place in the (tensor, pipeline, data)-parallel mesh (`compiler.mesh`)."""

    tp: int = Field(description="Tensor-parallel rank.")
    pp: int = Field(description="Pipeline-parallel rank (the stage).")
    dp: int = Field(description="Data-parallel rank (which shard of the batch it trains on).")


class DevicePlan(_Frozen):
    """One accelerator (or the CPU) and what runs on it."""

    node: int = Field(description="Node index (0-based).")
    index: int = Field(description="Device index on its node (0-based).")
    rank: int = Field(description="Global device rank: node * gpus_per_node + index.")
    roles: list[Role] = Field(description="Roles placed on this device.")
    memory_gib: dict[str, float] = Field(default_factory=dict, description="Estimated peak memory by component (GiB).")
    peak_gib: float = Field(0.0, description="Estimated peak memory on this device (GiB).")
    capacity_gib: float = Field(0.0, description="Device memory (GiB).")
    stage: Optional[int] = Field(None, description="Trainer pipeline stage held by this device (None: no trainer).")
    trainer_rank: Optional[int] = Field(None, description="Rank within the trainer group (None: no trainer).")
    mesh: Optional[MeshCoords] = Field(None, description="Trainer (tp, pp, dp) coordinates (None: no trainer).")
    replica: Optional[int] = Field(None, description="Generator replica this device serves (None: no generator).")
    peak_phase: str = Field("", description="RL-step phase at which the peak occurs (generation, log_probs, train).")
    phases_gib: dict[str, float] = Field(default_factory=dict, description="Estimated total memory per phase (GiB).")


class TrainerPlan(_Frozen):
    """The chosen trainer layout."""

    backend: Literal["megatron", "torch"]
    tensor_parallel: int
    pipeline_parallel: int
    context_parallel: int = 1
    data_parallel: int
    sequence_parallel: bool = False
    micro_batch_size: int = Field(description="Sequences per device per forward/backward.")
    gradient_accumulation: int = Field(description="Micro-batches per optimizer step per data-parallel rank.")
    recompute: Literal["none", "selective", "full"] = "full"
    offload: bool = False
    fp8: Literal["none", "delayed", "tensorwise", "blockwise"] = "none"
    distributed_optimizer: bool = True
    log_prob_micro_batch_size: int = Field(1, description="Sequences per device per old/reference log-prob forward.")
    ranks: list[int] = Field(description="Global device ranks of the trainer.")


class RolloutPlan(_Frozen):
    """The chosen generator layout."""

    backend: Literal["vllm", "hf"]
    tensor_parallel: int
    replicas: int
    gpu_memory_utilization: float
    sleep_level: int = 0
    max_model_len: int = Field(0, description="Prompt + response tokens a sequence may reach.")
    max_num_seqs: int = Field(0, description="Sequences a replica decodes at once (engine limit).")
    kv_cache_tokens: int = Field(0, description="Estimated KV-cache capacity of one replica (tokens).")
    concurrency: int = Field(0, description="Max-length sequences a replica can hold at once (KV and max_num_seqs).")
    replica_groups: list[list[int]] = Field(description="Global device ranks of each generator replica (one list per replica, TP ranks in order).")

    @property
    def ranks(self) -> list[int]:
        """Every generator device rank, replica-major."""
        return [r for g in self.replica_groups for r in g]


class WeightSyncPlan(_Frozen):
    """How new policy weights reach the generator after each update.

    in_process: the generator lives in trainer rank 0's process (CPU, one device); broadcast: a process
    group of trainer rank 0 and every generator worker, over ``backend`` (NCCL between the GPUs of a
    split placement; gloo through host memory on CPU and between colocated GPUs). cuda_ipc (colocated
    GPUs handing tensors over by IPC handle) is reserved: the runtime does not execute it.
    """

    method: Literal["in_process", "cuda_ipc", "broadcast"]
    backend: Literal["gloo", "nccl"] = Field("gloo", description="Process-group backend of a broadcast.")
    bucket_bytes: int = Field(description="Bytes per streamed bucket of HF-named full tensors.")
    source_rank: int = Field(0, description="Trainer rank that gathers and sends the full tensors.")
    receivers: list[int] = Field(default_factory=list, description="Device ranks of the generator workers that receive.")


class BundlePlan(_Frozen):
    """One Ray placement-group bundle: a device of a node and the roles sharing it."""

    node: int
    index: int = Field(description="Device index on its node; also the bundle index in the node's group.")
    rank: int = Field(description="Global device rank.")
    resources: dict[str, float] = Field(description="What the bundle reserves (GPU, CPU).")
    roles: list[Role] = Field(description="Roles whose actors are placed in this bundle.")


class OffloadPlan(_Frozen):
    """What leaves the accelerator during each phase of an RL step (component names as in memory_gib)."""

    generation: list[str] = Field(default_factory=list, description="Off the GPU while the generator samples.")
    train: list[str] = Field(default_factory=list, description="Off the GPU while the trainer updates.")


class ObjectivePlan(_Frozen):
    """What every trainer optimises, resolved from the spec (`compiler.lower.objective_plan`): the
    sampling temperature its log-probs and entropy are taken at, and the loss aggregation."""

    temperature: float = Field(1.0, ge=0, description="Rollout temperature: old, current and reference log-probs and the entropy are those of softmax(logits / temperature).")
    loss_agg: Literal["token_mean", "seq_mean_token_mean", "seq_mean_token_sum", "seq_mean_token_sum_norm",
                      "micro_batch_token_mean"] = Field("token_mean", description="Aggregation mode (algorithm.loss_agg with auto resolved).")
    loss_micro_batch: int = Field(2, description="Sequences per loss micro-batch (micro_batch_token_mean).")
    max_response_length: int = Field(0, description="Tokens: the constant normaliser of seq_mean_token_sum_norm.")


class Estimates(_Frozen):
    """Cost-model estimates (not measurements)."""

    step_time_s: float = Field(0.0, description="Estimated seconds per RL step (generation + log-probs + training).")
    generation_time_s: float = 0.0
    training_time_s: float = 0.0
    log_prob_time_s: float = Field(0.0, description="Old-policy and reference log-prob forwards (s).")
    sync_time_s: float = Field(0.0, description="Weight transfer trainer -> generator (s).")
    tokens_per_step: int = Field(0, description="Prompt + response tokens processed per RL step (upper bound).")
    params_b: float = Field(0.0, description="Model parameters (billions).")


class Plan(_Frozen):
    """A compiled experiment: resolved spec + placement + estimates, with a stable hash."""

    version: int = PLAN_VERSION
    spec: ExperimentSpec = Field(description="The fully resolved spec (after inheritance, overrides and defaults).")
    sources: list[str] = Field(default_factory=list, description="YAML files the spec was built from (root first).")
    architecture: Architecture = Field(description="The resolved model architecture.")
    accelerator: Literal["gpu", "cpu"]
    placement: Literal["colocated", "split"]
    nodes: int
    gpus_per_node: int
    feasible: bool
    reasons: list[str] = Field(default_factory=list, description="Why infeasible, and what would fit (empty when feasible).")
    notes: list[str] = Field(default_factory=list, description="Why the placement is what it is.")
    trainer: Optional[TrainerPlan] = None
    rollout: Optional[RolloutPlan] = None
    devices: list[DevicePlan] = Field(default_factory=list)
    weight_sync: Optional[WeightSyncPlan] = None
    bundles: list[list[BundlePlan]] = Field(default_factory=list, description="Ray placement-group bundles, one list per node (GPU plans).")
    offload: OffloadPlan = Field(default_factory=OffloadPlan)
    objective: ObjectivePlan = Field(default_factory=ObjectivePlan, description="The trainers' objective: temperature and loss aggregation.")
    estimates: Estimates = Field(default_factory=Estimates)

    @property
    def world_size(self) -> int:
        """Devices the plan uses (1 for the CPU default)."""
        return len(self.devices)

    @property
    def peak_memory_gib(self) -> float:
        """Largest per-device memory estimate (GiB)."""
        return max((d.peak_gib for d in self.devices), default=0.0)

    def canonical_json(self) -> str:
        """Deterministic JSON of the plan content (sorted keys, no whitespace)."""
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))

    @property
    def hash(self) -> str:
        """Stable content hash (first 16 hex digits of SHA-256 of the canonical JSON)."""
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()[:16]

    def to_json(self, indent: int | None = 2) -> str:
        """Serialise with the hash and peak memory included."""
        data = self.model_dump(mode="json")
        data["hash"] = self.hash
        data["peak_memory_gib"] = round(self.peak_memory_gib, 3)
        return json.dumps(data, indent=indent, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Plan":
        """Inverse of `to_json` (derived keys are dropped)."""
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("a plan is a JSON object; this file holds none")
        version = data.get("version")
        if version != PLAN_VERSION:
            raise ValueError(f"plan version {version!r} is not the version this engine reads ({PLAN_VERSION}); "
                             "compile the spec again with this engine (`engine plan SPEC`)")
        data.pop("hash", None)
        data.pop("peak_memory_gib", None)
        return cls.model_validate(data)
