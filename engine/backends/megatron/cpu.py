"""CPU compatibility for megatron-core's CUDA assumptions (activated only when the trainer runs on CPU).

megatron-core 0.16 is written for CUDA. On CPU (gloo) its maths runs unchanged, but a handful of
places assume a GPU (see ``../shared/GPU-BACKENDS.md``):

- the RNG tracker saves and restores *CUDA* generator states (``tensor_parallel/random.py``);
- ``torch.cuda.current_device()`` is used as a device (rotary embedding, global memory buffer, p2p);
- literal ``device='cuda'`` tensors (optimizer found-inf / scale, grad-norm clipping, schedules);
- ``Tensor.type()`` compared with ``'torch.cuda.FloatTensor'`` (optimizer, clip_grads);
- ``torch.cuda.synchronize()`` (p2p communication) and ``Tensor.cuda()``.
- the local softmax's causal and sliding-window masks (``device='cuda'`` literals, also reached
  inside autograd Functions such as activation recompute, where the device rewrite does not apply).

`cpu_compat()` is a re-entrant context manager that, while active, maps all of these to the CPU:
a `TorchFunctionMode` rewrites CUDA device arguments to ``cpu``, makes ``Tensor.cuda()`` a no-op and
reports CPU tensors' ``type()`` under the CUDA names; ``torch.cuda`` RNG, ``current_device`` and
``synchronize`` are swapped for their CPU counterparts and restored on exit. The Megatron trainer
enters it around every call into megatron-core when (and only when) its device is ``cpu``; it is
never entered on a GPU, where megatron-core runs unpatched. It is part of the product, not a test
fixture: ``engine run specs/quickstart.yaml trainer.backend=megatron`` trains on CPU through it.

The swap of ``torch.cuda.*`` functions is process-wide by nature (megatron-core looks them up on the
module), so its state is one object per process, `CUDA_ON_CPU` (a `CudaFunctionSwap`): how many
contexts are open (``depth``), the originals it will restore (``saved``) and the lock that guards both
across threads. The device rewrite is a torch function mode, which torch keeps per thread.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Callable, Iterator, Optional

import torch
from torch.overrides import TorchFunctionMode

_CUDA_TYPE_NAMES = {
    torch.float32: "torch.cuda.FloatTensor",
    torch.float16: "torch.cuda.HalfTensor",
    torch.bfloat16: "torch.cuda.BFloat16Tensor",
    torch.float64: "torch.cuda.DoubleTensor",
    torch.int64: "torch.cuda.LongTensor",
    torch.int32: "torch.cuda.IntTensor",
    torch.uint8: "torch.cuda.ByteTensor",
    torch.bool: "torch.cuda.BoolTensor",
}

_CPU = torch.device("cpu")


def _is_cuda_device(dev: Any) -> bool:
    if isinstance(dev, torch.device):
        return dev.type == "cuda"
    if isinstance(dev, str):
        return dev.startswith("cuda")
    # an int device index (what torch.cuda.current_device() returns) means a CUDA device
    return isinstance(dev, int) and not isinstance(dev, bool)


class _CudaToCpu(TorchFunctionMode):
    """Rewrites CUDA device arguments to CPU, and the two CUDA-only Tensor methods megatron calls."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func is torch.Tensor.cuda:
            return args[0]
        if func is torch.Tensor.type and len(args) == 1 and not kwargs:
            t = args[0]
            if t.device.type == "cpu" and t.dtype in _CUDA_TYPE_NAMES:
                return _CUDA_TYPE_NAMES[t.dtype]
        if "device" in kwargs and _is_cuda_device(kwargs["device"]):
            kwargs["device"] = _CPU
        if func in (torch.Tensor.to,) and len(args) > 1 and _is_cuda_device(args[1]):
            args = (args[0], _CPU) + tuple(args[2:])
        return func(*args, **kwargs)


# The swapped functions' state (depth, originals, lock) lives in one object, `CUDA_ON_CPU` (below).


def _causal_mask(sq: int) -> torch.Tensor:
    """megatron's ``get_default_causal_mask`` on the CPU: True above the diagonal (masked)."""
    return torch.triu(torch.ones(sq, sq, dtype=torch.bool), diagonal=1)


def _window_mask(sq: int, skv: int, window_size: tuple[int, int]) -> torch.Tensor:
    """megatron's ``get_sliding_window_causal_mask`` on the CPU: True outside
    [q - window_size[0], q + window_size[1]] (aligned to the end of the keys)."""
    m = torch.ones(sq, skv, dtype=torch.bool)
    keep = torch.tril(torch.triu(m, diagonal=skv - sq - window_size[0]), diagonal=skv - sq + window_size[1])
    return ~keep


def _cuda_patches() -> dict[str, tuple[Any, str, Any]]:
    """(owner, attribute, replacement) for every module-level function the shim swaps."""
    import megatron.core.fusions.fused_softmax as msoftmax
    import megatron.core.tensor_parallel.random as mrandom

    def get_state(*_a: Any, **_k: Any) -> torch.Tensor:
        return torch.get_rng_state()

    def set_state(state: torch.Tensor, *_a: Any, **_k: Any) -> None:
        torch.set_rng_state(state)

    return {
        # the CPU itself (not an index): also right where megatron builds tensors with device=current_device()
        # inside autograd Functions (SP backward, recompute), where the device rewrite does not apply
        "cuda.current_device": (torch.cuda, "current_device", lambda: _CPU),
        "cuda.synchronize": (torch.cuda, "synchronize", lambda *a, **k: None),
        "cuda.get_rng_state": (torch.cuda, "get_rng_state", get_state),
        "cuda.set_rng_state": (torch.cuda, "set_rng_state", set_state),
        "cuda.manual_seed": (torch.cuda, "manual_seed", lambda seed: None),
        "cuda.random.get_rng_state": (torch.cuda.random, "get_rng_state", get_state),
        "mrandom._get_cuda_rng_state": (mrandom, "_get_cuda_rng_state", get_state),
        "mrandom._set_cuda_rng_state": (mrandom, "_set_cuda_rng_state", set_state),
        # the local softmax builds its causal / sliding-window masks on device="cuda" (reached inside
        # autograd Functions such as activation recompute, where the device rewrite does not apply)
        "msoftmax.get_default_causal_mask": (msoftmax, "get_default_causal_mask", _causal_mask),
        "msoftmax.get_sliding_window_causal_mask": (msoftmax, "get_sliding_window_causal_mask", _window_mask),
    }


class CudaFunctionSwap:
    """The process-wide swap of ``torch.cuda`` (and megatron's CUDA RNG) functions for CPU ones.

    ``acquire`` swaps them in on the first of nested (or concurrent) users and ``release`` puts the
    originals back when the last one leaves. ``patches``: builds the (owner, attribute, replacement)
    table (`_cuda_patches`; a test may pass its own).
    """

    def __init__(self, patches: Callable[[], dict[str, tuple[Any, str, Any]]] = _cuda_patches) -> None:
        self._patches = patches
        self._lock = threading.Lock()
        self.depth = 0  # contexts open in this process
        self.saved: dict[str, tuple[Any, str, Any]] = {}  # key -> (owner, attribute, original)

    @property
    def active(self) -> bool:
        return self.depth > 0

    def acquire(self) -> None:
        with self._lock:
            if self.depth == 0:
                for key, (owner, attr, repl) in self._patches().items():
                    self.saved[key] = (owner, attr, getattr(owner, attr))
                    setattr(owner, attr, repl)
            self.depth += 1

    def release(self) -> None:
        with self._lock:
            if self.depth == 0:
                raise RuntimeError("CudaFunctionSwap.release without acquire")
            self.depth -= 1
            if self.depth == 0:
                for owner, attr, orig in self.saved.values():
                    setattr(owner, attr, orig)
                self.saved.clear()


#: The one swap of this process (``torch.cuda`` is one module per process).
CUDA_ON_CPU = CudaFunctionSwap()


@contextlib.contextmanager
def cpu_compat(swap: Optional[CudaFunctionSwap] = None) -> Iterator[None]:
    """Run megatron-core on CPU inside this context (re-entrant; everything is restored on exit).

    Device arguments that name CUDA become ``cpu``; CUDA RNG state calls use the CPU generator (so
    the model-parallel RNG tracker forks CPU states); ``torch.cuda.synchronize`` does nothing.
    ``swap``: whose function swap to hold (default: this process's `CUDA_ON_CPU`)."""
    swap = CUDA_ON_CPU if swap is None else swap
    swap.acquire()
    try:
        with _CudaToCpu():
            yield
    finally:
        swap.release()


def compat_for(device: str | torch.device) -> contextlib.AbstractContextManager:
    """`cpu_compat()` when ``device`` is the CPU, else a no-op context (megatron-core unpatched)."""
    return cpu_compat() if torch.device(device).type == "cpu" else contextlib.nullcontext()
