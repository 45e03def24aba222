"""Sampling settings and seeds shared by the training loop and evaluation."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Protocol

from engine.core.generation import Generation, SamplingParams

if TYPE_CHECKING:
    from compiler.plan import SamplingPlan


def step_seed(seed: int, step: int, purpose: str = "rollout") -> int:
    """A 63-bit seed for ``(seed, step, purpose)``; independent of any global RNG state."""
    h = hashlib.sha256(f"{seed}:{step}:{purpose}".encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


def sampling_params(sampling: "SamplingPlan", end_ids: tuple[int, ...], logprobs: bool = False) -> SamplingParams:
    """The generator's settings of one of the plan's phases (``plan.sampling``, the rollout;
    ``plan.evaluation.sampling`` / ``base_sampling``), with the tokenizer's end tokens."""
    return SamplingParams(sampling.max_tokens, sampling.temperature, sampling.top_p, sampling.top_k,
                          tuple(sampling.stop), tuple(end_ids), logprobs=logprobs)


class Sampler(Protocol):
    """What evaluation and data selection need from a run: sample responses and grade them."""

    def generate(self, prompt_ids: list[list[int]], n: int, params: SamplingParams, seed: int) -> Generation: ...

    def grade(self, texts: list[str], ground_truths: list[str]) -> dict[str, list]: ...
