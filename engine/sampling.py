"""Sampling settings and seeds shared by the training loop and evaluation."""

from __future__ import annotations

import hashlib
from typing import Any, Protocol

from engine.core.generation import Generation, SamplingParams


def step_seed(seed: int, step: int, purpose: str = "rollout") -> int:
    """A 63-bit seed for ``(seed, step, purpose)``; independent of any global RNG state."""
    h = hashlib.sha256(f"{seed}:{step}:{purpose}".encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


def sampling_params(spec: Any, end_ids: tuple[int, ...], evaluation: bool = False, base: bool = False,
                    logprobs: bool = False) -> SamplingParams:
    """Rollout sampling, or evaluation sampling (``base``: the step-0 evaluation of the base model)."""
    stops = tuple(dict.fromkeys(list(spec.model.stop) + list(spec.rollout.stop)))
    if evaluation:
        e = spec.evaluation
        temperature = e.base_temperature if base else e.temperature
        # the evaluation's own length (the recipe: up to 16K); the compiler sizes the generator's
        # max_model_len for it, so answers are not cut at the training length
        return SamplingParams(e.max_response_length, temperature, e.top_p, -1, stops, end_ids)
    r = spec.rollout
    return SamplingParams(spec.data.max_response_length, r.temperature, r.top_p, r.top_k, stops, end_ids,
                          logprobs=logprobs)


class Sampler(Protocol):
    """What evaluation and data selection need from a run: sample responses and grade them."""

    def generate(self, prompt_ids: list[list[int]], n: int, params: SamplingParams, seed: int) -> Generation: ...

    def grade(self, texts: list[str], ground_truths: list[str]) -> dict[str, list]: ...
