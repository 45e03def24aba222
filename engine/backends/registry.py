"""The one place a backend name becomes code: ``plan.trainer.backend`` / ``plan.rollout.backend`` ->
a builder. Workers call `build_trainer` / `build_generator` and hold the result as the
`engine.backends.base` protocol; no module outside this one branches on a backend name.

Builders are named as ``module:function`` and imported only when a plan selects them, so the GPU
packages (vLLM, megatron-core, Transformer Engine) stay optional.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Optional

from engine.backends.base import Generator, Trainer

TRAINERS: dict[str, str] = {
    "torch": "engine.backends.torch_trainer:build",
    "megatron": "engine.backends.megatron.trainer:build",
}
GENERATORS: dict[str, str] = {
    "hf": "engine.backends.hf_generator:build",
    "vllm": "engine.backends.vllm_generator:build",
}


@dataclass(frozen=True)
class BackendContext:
    """What a backend builder gets: the plan, the model and tokenizer folders, and where it runs.

    rank / world_size: this process's rank in its role's group (torch.distributed is already
    initialised by the worker group when world_size > 1). device: "cpu" or "cuda[:i]". frozen: a
    trainer that only computes log-probs (the reference policy): no optimizer state, no critic.
    dummy_weights: a generator that does not load the folder's weights (random init of the right
    shapes); the trainer's first weight sync fills them, so a broken sync cannot hide behind weights
    that happen to be right already.
    """

    plan: Any
    model_path: str
    tokenizer_path: str
    device: str = "cpu"
    rank: int = 0
    world_size: int = 1
    frozen: bool = False
    dummy_weights: bool = False


def _load(table: dict[str, str], name: str, role: str):
    try:
        target = table[name]
    except KeyError:
        raise ValueError(f"unknown {role} backend '{name}' (known: {', '.join(sorted(table))})") from None
    module, func = target.split(":")
    return getattr(importlib.import_module(module), func)


def build_trainer(ctx: BackendContext) -> Trainer:
    """The plan's trainer backend for this rank."""
    return _load(TRAINERS, ctx.plan.trainer.backend, "trainer")(ctx)


def build_generator(ctx: BackendContext, shared_model: Optional[Any] = None) -> Generator:
    """The plan's generator backend (``shared_model``: an in-process trainer's HF module, which the hf
    generator samples from directly)."""
    return _load(GENERATORS, ctx.plan.rollout.backend, "generator")(ctx, shared_model)
