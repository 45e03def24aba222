"""The one place a backend name becomes code: ``plan.trainer.backend`` / ``plan.rollout.backend`` ->
the builder the backend catalog (`compiler.backends`) names. Workers call `build_trainer` /
`build_generator` and hold the result as the `engine.backends.base` protocol; no module outside this
one branches on a backend name.

Builders are ``module:function`` paths imported only when a plan selects them, so the GPU packages
(vLLM, megatron-core, Transformer Engine) stay optional. A rehearsing worker (``ctx.rehearsal``)
gets the catalog's stand-in for its role instead (`engine.rehearse.standins`): the same protocol,
with a memory ledger where the accelerator would be.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

from compiler.backends import REHEARSAL_BUILDERS, backend
from engine.backends.base import Generator, Trainer

if TYPE_CHECKING:  # annotations only: no import at run time
    from compiler.plan import Plan


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

    plan: Plan
    model_path: str
    tokenizer_path: str
    device: str = "cpu"
    rank: int = 0
    world_size: int = 1
    frozen: bool = False
    dummy_weights: bool = False
    rehearsal: Optional[Any] = None  # `engine.rehearse.standins.RehearsalSetup` when rehearsing
    device_rank: Optional[int] = None  # the plan's global device rank this worker runs on (GPU plans)
    replica: int = 0  # generator replica index


def _load(role: str, name: str, rehearsing: bool):
    target = REHEARSAL_BUILDERS[role] if rehearsing else backend(role, name).builder
    module, func = target.split(":")
    return getattr(importlib.import_module(module), func)


def build_trainer(ctx: BackendContext) -> Trainer:
    """The plan's trainer backend for this rank."""
    return _load("trainer", ctx.plan.trainer.backend, ctx.rehearsal is not None)(ctx)


def build_generator(ctx: BackendContext, shared_model: Optional[Any] = None) -> Generator:
    """The plan's generator backend (``shared_model``: an in-process trainer's HF module, which the hf
    generator samples from directly)."""
    return _load("generator", ctx.plan.rollout.backend, ctx.rehearsal is not None)(ctx, shared_model)


def build_weight_sender(ctx: BackendContext, host: str, port: int, world_size: int, names: list[str]) -> Any:
    """Trainer rank 0's side of the weight broadcast group (`plan.weight_sync.backend`): gloo through
    host memory, or NCCL on the device; a rehearsal's stand-in checks the stream and sends nothing."""
    if ctx.rehearsal is not None:
        module, cls = REHEARSAL_BUILDERS["sender"].split(":")
        return getattr(importlib.import_module(module), cls)(names)
    from engine.backends.weight_transfer import BroadcastGroup

    backend_name = ctx.plan.weight_sync.backend
    device = ctx.device if backend_name == "nccl" else "cpu"
    return BroadcastGroup(host, port, world_size, 0, backend_name, device=device)
