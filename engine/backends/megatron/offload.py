"""Releasing a Megatron trainer's GPU memory between updates (colocated with the generator).

Parameters and gradients live in Megatron DDP's contiguous buffers: the parameter buffers are copied
to (pinned) host memory and their device storage freed; gradient buffers are freed (they are zeroed
at the start of every update anyway); optimizer states (and fp32 master copies) are moved to host
memory. `onload_model_and_optimizer` reverses it. GPU only; the CPU trainer never calls these, and
they have not run on a GPU yet (`bench/megatron/gpu_check.py` exercises them once). Parameters are
offloaded through the DDP parameter buffers, which Megatron allocates with the distributed optimizer;
without it only gradients and optimizer state move.
"""

from __future__ import annotations

from typing import Any

import torch


def _buffers(model: Any) -> list[Any]:
    return list(getattr(model, "buffers", [])) + list(getattr(model, "expert_parallel_buffers", []))


def _optimizers(optimizer: Any) -> list[Any]:
    return list(getattr(optimizer, "chained_optimizers", [optimizer]))


@torch.no_grad()
def offload_model_and_optimizer(model: Any, optimizer: Any) -> None:
    """Device -> host for parameters and optimizer state; gradients are dropped."""
    for buf in _buffers(model):
        if buf.param_data is not None and buf.param_data.untyped_storage().nbytes() > 0:
            buf.param_data_cpu = buf.param_data.detach().to("cpu").pin_memory()
            buf.param_data.untyped_storage().resize_(0)
        if buf.grad_data.untyped_storage().nbytes() > 0:
            buf.grad_data_bytes = buf.grad_data.untyped_storage().nbytes()
            buf.grad_data.untyped_storage().resize_(0)
    for opt in _optimizers(optimizer):
        inner = getattr(opt, "optimizer", None)
        if inner is None:
            continue
        for state in inner.state.values():
            for k, v in state.items():
                if isinstance(v, torch.Tensor) and v.is_cuda:
                    state[k] = v.to("cpu", non_blocking=True)
        for group in getattr(opt, "shard_fp32_from_float16_groups", []):
            for p in group:
                p.data = p.data.to("cpu", non_blocking=True)
    torch.cuda.synchronize()


@torch.no_grad()
def onload_model_and_optimizer(model: Any, optimizer: Any, device: torch.device) -> None:
    """Host -> device: the inverse of `offload_model_and_optimizer` (gradients re-allocated, zero)."""
    for buf in _buffers(model):
        cpu = getattr(buf, "param_data_cpu", None)
        if cpu is not None:
            buf.param_data.untyped_storage().resize_(cpu.numel() * cpu.element_size())
            buf.param_data.copy_(cpu, non_blocking=True)
            buf.param_data_cpu = None
        nbytes = getattr(buf, "grad_data_bytes", None)
        if nbytes:
            buf.grad_data.untyped_storage().resize_(nbytes)
            buf.grad_data.zero_()
            buf.grad_data_bytes = None
    for opt in _optimizers(optimizer):
        inner = getattr(opt, "optimizer", None)
        if inner is None:
            continue
        for state in inner.state.values():
            for k, v in state.items():
                if isinstance(v, torch.Tensor) and not v.is_cuda and v.dim() > 0:
                    state[k] = v.to(device, non_blocking=True)
        for group in getattr(opt, "shard_fp32_from_float16_groups", []):
            for p in group:
                p.data = p.data.to(device, non_blocking=True)
    torch.cuda.synchronize()
