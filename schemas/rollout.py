"""`rollout:` the generator that samples responses."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, PositiveInt

from schemas.common import IntOrAuto, Section


class RolloutSpec(Section):
    """Sampling engine and sampling parameters."""

    backend: Literal["vllm", "hf"] = Field("vllm", description="vllm (GPU) or hf (transformers generate; CPU and small GPU runs).")
    tensor_parallel: IntOrAuto = Field("auto", description="GPUs per generator replica, or 'auto'.")
    gpu_memory_utilization: float = Field(0.75, gt=0, le=1, description="Fraction of each GPU's memory vLLM reserves (weights + KV cache + graphs).")
    n: PositiveInt = Field(8, description="Responses sampled per prompt (GRPO group size).")
    temperature: float = Field(1.0, ge=0, description="Sampling temperature (0 = greedy).")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass.")
    top_k: int = Field(-1, description="Top-k sampling (-1 = off).")
    stop: list[str] = Field(default_factory=list, description="Stop strings (besides the tokenizer's end tokens).")
    sleep_level: Literal[0, 1, 2] = Field(1, description="Colocated vLLM sleep mode during training: 0 keeps the weights; 1 or 2 sleeps, and the compiler then picks level 2 (drop the weights, no copy to host and back) where the next sync overwrites every weight, level 1 (offload them) otherwise.")
    enforce_eager: bool = Field(False, description="Disable CUDA graphs (saves their memory, slower decode).")
    max_num_seqs: PositiveInt = Field(256, description="Sequences a vLLM replica decodes at once.")
    quantization: Literal["none", "fp8"] = Field("none", description="vllm on GPU: 'fp8' runs the rollout with vLLM's fp8 weight quantization (the trainer stays in its dtype; pair with algorithm TIS).")
    micro_batch_size: Optional[PositiveInt] = Field(None, description="hf backend: prompts generated at once (None = all).")
    weight_bucket_mib: PositiveInt = Field(512, description="Weight sync: MiB of HF-named full tensors per streamed bucket.")
    parity_threshold: float = Field(1.05, gt=1, description="Refit-parity gate: stop at step 0 when mean exp(|logp_trainer - logp_rollout|) over response tokens exceeds this (1.0 is perfect parity).")
