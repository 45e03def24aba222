"""The megatron CPU shim's process-wide state is one explicit object: nested and concurrent users share
one swap, and the originals come back when the last one leaves."""

import threading
import types

import pytest
import torch

from engine.backends.megatron.cpu import CUDA_ON_CPU, CudaFunctionSwap, cpu_compat


def _swap():
    target = types.SimpleNamespace(f=lambda: "original")
    return target, CudaFunctionSwap(lambda: {"f": (target, "f", lambda: "swapped")})


def test_nested_users_share_one_swap():
    target, swap = _swap()
    swap.acquire()
    swap.acquire()
    assert target.f() == "swapped" and swap.depth == 2
    swap.release()
    assert target.f() == "swapped"  # one user still inside
    swap.release()
    assert target.f() == "original" and not swap.active and swap.saved == {}
    with pytest.raises(RuntimeError, match="without acquire"):
        swap.release()


def test_threads_share_one_swap():
    target, swap = _swap()
    inside, leave = threading.Barrier(3), threading.Event()
    seen = []

    def user():
        with cpu_compat(swap):
            inside.wait()
            seen.append(target.f())
            leave.wait()

    threads = [threading.Thread(target=user) for _ in range(2)]
    for t in threads:
        t.start()
    inside.wait()
    assert swap.depth == 2
    leave.set()
    for t in threads:
        t.join()
    assert seen == ["swapped", "swapped"] and target.f() == "original" and swap.depth == 0


def test_the_process_swap_is_restored_after_megatron_calls():
    before = torch.cuda.current_device
    with cpu_compat():
        assert CUDA_ON_CPU.active and torch.cuda.current_device() == torch.device("cpu")  # a device, not an index
        assert torch.zeros(1, device="cuda").device.type == "cpu"
    assert not CUDA_ON_CPU.active and torch.cuda.current_device is before
