"""`trainer:` the policy optimiser and its parallelism."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveFloat, PositiveInt

from schemas.common import IntOrAuto, Section


class TrainerSpec(Section):
    """Training backend, parallel layout, precision and optimiser."""

    backend: Literal["megatron", "torch"] = Field("megatron", description="megatron (Megatron-core, GPU) or torch (plain PyTorch; CPU and single GPU).")
    tensor_parallel: IntOrAuto = Field("auto", description="Tensor-parallel size, or 'auto'.")
    pipeline_parallel: IntOrAuto = Field("auto", description="Pipeline-parallel size, or 'auto'.")
    context_parallel: PositiveInt = Field(1, description="Context-parallel size (sequence split across GPUs).")
    sequence_parallel: bool = Field(True, description="Megatron sequence parallelism (only active with TP > 1).")
    distributed_optimizer: bool = Field(True, description="Shard optimizer states over data-parallel ranks.")
    offload: bool = Field(False, description="Offload optimizer states and grads to CPU between updates.")
    fp8: Literal["none", "delayed", "tensorwise", "blockwise"] = Field("none", description="Transformer Engine FP8 recipe.")
    recompute: Literal["none", "selective", "full"] = Field("full", description="Activation recomputation.")
    micro_batch_size: PositiveInt = Field(1, description="Sequences per GPU per forward/backward.")
    log_prob_micro_batch_size: PositiveInt = Field(8, description="Sequences per GPU when computing old/reference log-probs.")
    lr: PositiveFloat = Field(5e-7, description="AdamW learning rate (constant).")
    warmup_steps: int = Field(0, ge=0, description="Linear warm-up (optimizer steps).")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay.")
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas.")
    grad_clip: PositiveFloat = Field(1.0, description="Global gradient-norm clip.")
    total_steps: PositiveInt = Field(100, description="RL steps (rollout batches) to train.")
