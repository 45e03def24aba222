"""The two backend interfaces the runtime drives: `Generator` (sampling) and `Trainer` (updates).

Backends are picked by the plan (`plan.rollout.backend`, `plan.trainer.backend`). The CPU / single-GPU
implementations are `hf` and `torch`; a vLLM generator and a Megatron trainer implement the same
protocols. Weight sync is explicit: the trainer exports `weights()` (a name -> tensor mapping in HF
naming) and the generator takes them with `load_weights()`; a colocated in-process pair may share
one module, in which case `load_weights` is a no-op. `sleep()` / `wake()` let a colocated GPU
generator release memory while the trainer runs (no-ops on CPU).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Protocol, runtime_checkable


@dataclass(frozen=True)
class SamplingParams:
    """How responses are sampled.

    max_new_tokens: response budget (tokens). temperature 0 means greedy. top_k -1 means off.
    stop: stop strings (a response ends once its text contains one). end_token_ids: token ids that
    end a response (taken from the tokenizer, never guessed from a model name).
    """

    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    stop: tuple[str, ...] = ()
    end_token_ids: tuple[int, ...] = ()


@dataclass
class Generation:
    """Responses for a list of prompts, in prompt-major order (prompt i, sample j at i * n + j).

    response_ids: generated token ids per sequence, including the end token when one was produced.
    finish_reasons: "stop" (end token or stop string) or "length" (hit max_new_tokens).
    texts: decoded responses (special tokens removed).
    """

    response_ids: list[list[int]]
    finish_reasons: list[str]
    texts: list[str]
    stats: dict[str, float] = field(default_factory=dict)


@runtime_checkable
class Generator(Protocol):
    """Samples responses from the current policy."""

    def generate(self, prompt_ids: list[list[int]], n: int, params: SamplingParams, seed: int) -> Generation:
        """Sample ``n`` responses per prompt; reproducible for a given ``seed``."""

    def load_weights(self, weights: Iterable[tuple[str, Any]] | Mapping[str, Any]) -> None:
        """Take new policy weights from the trainer (HF parameter names)."""

    def sleep(self) -> None:
        """Release accelerator memory while the trainer runs (colocated GPU placement)."""

    def wake(self) -> None:
        """Re-acquire memory before the next generation."""


@runtime_checkable
class Trainer(Protocol):
    """Owns the policy parameters and the optimizer."""

    def compute_log_probs(self, batch: Mapping[str, Any]) -> Any:
        """Per-token log-probs (nats) of ``batch['responses']`` under the current policy, [B, T]."""

    def update(self, batch: Mapping[str, Any]) -> dict[str, float]:
        """One RL update over the batch (mini-batches, micro-batches, accumulation); returns metrics."""

    def weights(self) -> Iterable[tuple[str, Any]]:
        """Current policy weights in HF naming, for the generator."""

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume (model, optimizer, scheduler)."""

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Inverse of `state_dict`."""

    def export_hf(self, path: str) -> None:
        """Write the policy as a HF model folder."""
