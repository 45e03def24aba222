"""Device strings as the runtime hands them to backends, and the allocator release every trainer offers.

A worker on a GPU is given ``cuda:<local index>``: the index among the GPUs its process sees (Ray sets
``CUDA_VISIBLE_DEVICES`` to the bundle's GPU, so an actor's one GPU is ``cuda:0``). A bare ``cuda``
is refused here, because ``torch.cuda.set_device`` refuses it ("Expected a torch.device with a
specified index") on every torch build, the CPU wheel included.
"""

from __future__ import annotations

from typing import Union

import torch


def parse_device(device: Union[str, torch.device]) -> torch.device:
    """``device`` through torch's own parser; a CUDA device must name its index."""
    d = torch.device(device)
    if d.type == "cuda" and d.index is None:
        raise ValueError(f"device {str(device)!r} has no index: a worker's GPU is 'cuda:<local index>' "
                         "(the index among the GPUs this process sees, 'cuda:0' under Ray)")
    return d


def release_cached(device: Union[str, torch.device]) -> None:
    """Hand the caching allocator's unused blocks back to the device (``torch.cuda.empty_cache``),
    so a colocated generator can map them; a no-op off CUDA."""
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()
