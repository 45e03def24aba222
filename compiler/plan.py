"""The `Plan`: what the compiler hands the runtime. A plain, serialisable, hashed value.

The runtime executes a Plan and never re-reads YAML or makes placement decisions: everything it
needs (the resolved spec, backends, parallel sizes, which device holds which role) is here. Every
setting the runtime executes is lowered into the Plan's own sections (`schedule`, `optim`,
`objective`, `sampling`, `evaluation`, `reward`, `trainer`, `rollout`, ...); the runtime reads the
resolved ``spec`` only for the inputs it names: the model and data files, the prompt template,
tracking, and the cluster's addresses (tests/compiler/test_plan_fields.py holds that list).
"""

from __future__ import annotations

import hashlib
import json
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

from schemas import Architecture, ExperimentSpec

#: Bumped whenever a field the runtime reads changes; `Plan.from_json` refuses other versions.
PLAN_VERSION = 4

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
    # the runtime follows the devices' roles and weight_sync.method, which the placement decided
    "placement",
    # always 1 at run time: compiler.rules refuses context parallelism no trainer here executes
    "trainer.context_parallel",
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
    micro_batch_size: int = Field(0, description="hf: prompts generated at once (0: the whole batch).")
    enforce_eager: bool = Field(False, description="vllm: no CUDA graphs (always eager on CPU).")
    quantization: Literal["none", "fp8"] = Field("none", description="vllm on GPU: the rollout's weight quantization.")
    kv_cache_tokens: int = Field(0, description="Estimated KV-cache capacity of one replica (tokens).")
    concurrency: int = Field(0, description="Max-length sequences a replica can hold at once (KV and max_num_seqs).")
    replica_groups: list[list[int]] = Field(description="Global device ranks of each generator replica (one list per replica, TP ranks in order).")

    @property
    def ranks(self) -> list[int]:
        """Every generator device rank, replica-major."""
        return [r for g in self.replica_groups for r in g]


class WeightSyncPlan(_Frozen):
    """How new policy weights reach the generator after each update.

    in_process: the generator samples from the trainer's own module in trainer rank 0's process (the
    hf generator); handles: colocated, each trainer rank packs the buckets into buffers on its device
    and hands the generator worker on the same device a handle to them (CUDA IPC on GPU, shared
    memory on CPU; `engine.backends.handle_transport`); broadcast: a process group of trainer rank 0
    and every generator worker, over ``backend`` (NCCL between the GPUs of a split placement; gloo
    through host memory on CPU).
    """

    method: Literal["in_process", "handles", "broadcast"]
    backend: Literal["gloo", "nccl"] = Field("gloo", description="Process-group backend of a broadcast.")
    bucket_bytes: int = Field(description="Bytes per streamed bucket of HF-named full tensors.")
    source_rank: int = Field(0, description="Trainer rank that gathers and sends the full tensors.")
    receivers: list[int] = Field(default_factory=list, description="Device ranks of the generator workers that receive.")
    senders: list[int] = Field(default_factory=list, description="handles: the device rank of the trainer rank that hands each receiver its buckets (its own device), in the order of receivers.")
    in_trainer: bool = Field(False, description="handles: the generator runs in the sending trainer rank's process (CPU, one GPU).")
    buffer_bytes: int = Field(0, description="handles: bytes of one buffer (the largest bucket plus alignment slack).")
    buffers: int = Field(0, description="handles: buffers each sender packs into in turn (2: packing overlaps loading).")


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
    advantage estimator, the sampling temperature its log-probs and entropy are taken at, the clipped
    policy loss with its KL and entropy terms, the off-policy correction, and the loss aggregation."""

    advantage: Literal["grpo", "dr_grpo", "gae"] = Field(description="Advantage estimator (algorithm.advantage).")
    norm_eps: float = Field(description="Added to the group std of grpo (reward units).")
    gamma: float = Field(description="gae: discount.")
    lam: float = Field(description="gae: lambda.")
    temperature: float = Field(ge=0, description="Rollout temperature: old, current and reference log-probs and the entropy are those of softmax(logits / temperature).")
    clip_low: float = Field(description="PPO ratio lower clip: ratio >= 1 - clip_low.")
    clip_high: float = Field(description="PPO ratio upper clip: ratio <= 1 + clip_high.")
    kl_coef: float = Field(description="Weight of the KL(policy || reference) term (0: no reference).")
    kl_estimator: Literal["k1", "k2", "k3"] = Field(description="KL estimator.")
    kl_clamp: float = Field(description="k3 values are clamped to [-kl_clamp, kl_clamp] (nats).")
    entropy_coef: float = Field(description="Weight of the entropy bonus.")
    rollout_correction: Literal["none", "tis"] = Field(description="tis: each token's loss weighted by min(p_trainer / p_rollout, tis_cap).")
    tis_cap: float = Field(description="Upper bound of the truncated importance weight.")
    loss_agg: Literal["token_mean", "seq_mean_token_mean", "seq_mean_token_sum", "seq_mean_token_sum_norm",
                      "micro_batch_token_mean"] = Field(description="Aggregation mode (algorithm.loss_agg with auto resolved).")
    loss_micro_batch: int = Field(description="Sequences per loss micro-batch (micro_batch_token_mean).")
    max_response_length: int = Field(description="Tokens: the constant normaliser of seq_mean_token_sum_norm.")


class OptimPlan(_Frozen):
    """The trainers' AdamW (`trainer.*`), and the critic's learning rate (advantage gae)."""

    lr: float = Field(description="Learning rate per optimizer step (constant after the warm-up).")
    betas: tuple[float, float] = Field(description="AdamW betas.")
    weight_decay: float = Field(description="AdamW weight decay.")
    warmup_steps: int = Field(description="Linear warm-up (optimizer steps).")
    grad_clip: float = Field(description="Global gradient L2-norm clip.")
    critic_lr: float = Field(description="Critic learning rate (gae).")


class SchedulePlan(_Frozen):
    """The run loop's schedule: seeds, steps, batch sizes, the step-0 gate, pass-rate selection and
    checkpoints (`compiler.lower.schedule_plan`)."""

    seed: int = Field(description="Global random seed; every step's sampling seed derives from it.")
    total_steps: int = Field(description="RL steps (rollout batches).")
    prompts_per_step: int = Field(description="Prompts per RL step (data.train_batch_size).")
    samples_per_prompt: int = Field(description="Responses per prompt (rollout.n, the group size).")
    shuffle: bool = Field(description="Shuffle the training prompts each epoch.")
    mini_batch_sequences: int = Field(description="Sequences per optimizer step, over all data-parallel ranks (ppo_mini_batch_size x n).")
    epochs: int = Field(description="Passes over each rollout batch.")
    on_policy: bool = Field(description="One optimizer step per batch (one mini-batch, one epoch): the update's forward pass is the old policy's, so no old log-prob pass runs.")
    reference: bool = Field(description="A frozen reference model computes log-probs each step (kl_coef > 0).")
    critic: bool = Field(description="A value model is trained beside the policy (advantage gae).")
    parity_gate: bool = Field(description="Step 0 compares the generator's log-probs with the trainer's before any update (vllm, or TIS).")
    parity_threshold: float = Field(description="The gate's bound on the mean exp(|logp_trainer - logp_rollout|).")
    min_pass_rate: Optional[float] = Field(None, description="Pass-rate selection: drop prompts solved less often than this.")
    max_pass_rate: Optional[float] = Field(None, description="Pass-rate selection: drop prompts solved more often than this.")
    checkpoint_every: int = Field(description="Save a checkpoint every this many RL steps (and at the last).")
    keep_checkpoints: int = Field(description="Checkpoints kept (older ones are deleted).")
    export_hf: bool = Field(description="Export the final policy as a HF model folder.")


class SamplingPlan(_Frozen):
    """How one phase samples; the tokenizer's end tokens join these at run time."""

    max_tokens: int = Field(description="Longest response (tokens).")
    temperature: float = Field(ge=0, description="Sampling temperature (0: greedy).")
    top_p: float = Field(description="Nucleus mass.")
    top_k: int = Field(-1, description="Top-k (-1: off).")
    stop: list[str] = Field(default_factory=list, description="Stop strings: model.stop then rollout.stop, without repeats.")


class EvaluationPlan(_Frozen):
    """When and how the run evaluates (`evaluation.*`)."""

    every: int = Field(description="Evaluate every this many RL steps, and at the last (0: never).")
    before_training: bool = Field(description="Evaluate the base model at step 0.")
    batch_size: int = Field(description="Prompts per evaluation batch.")
    samples: int = Field(description="Samples per prompt (avg@k, pass@k).")
    samples_by_benchmark: dict[str, int] = Field(default_factory=dict, description="Samples per prompt of the named benchmarks.")
    sampling: SamplingPlan = Field(description="Sampling of the RL checkpoints.")
    base_sampling: SamplingPlan = Field(description="Sampling of the base model (step 0, `engine eval --base`).")


class RewardPlan(_Frozen):
    """The rule-based reward (`reward.*`; `engine.reward.RewardConfig`)."""

    format: Literal["none", "strict", "independent"]
    correct: float = Field(description="Reward of a correct answer.")
    wrong: float = Field(description="Reward of a wrong answer.")
    format_penalty: float = Field(description="Reward when the format rule is broken.")
    timeout_s: float = Field(description="Time bound of one verification (seconds).")
    workers: int = Field(description="Verification processes (0: in the calling process).")


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
    dtype: Literal["bfloat16", "float32"] = Field(description="Parameter dtype of the trainer and generator on GPU (CPU runs in float32).")
    objective: ObjectivePlan = Field(description="The trainers' objective: advantage, loss terms, temperature and aggregation.")
    optim: OptimPlan = Field(description="The trainers' optimizer.")
    schedule: SchedulePlan = Field(description="The run loop's steps, batch sizes, seeds, gates and checkpoints.")
    sampling: SamplingPlan = Field(description="The rollout's sampling.")
    evaluation: EvaluationPlan = Field(description="When and how the run evaluates.")
    reward: RewardPlan = Field(description="The reward's scores and bounds.")
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
