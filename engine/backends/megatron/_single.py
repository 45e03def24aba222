"""A one-rank torch.distributed group for a single-process Megatron trainer (megatron-core needs one)."""

from __future__ import annotations

import socket

import torch


def init_single_process_group(backend: str = "gloo") -> None:
    """Initialise torch.distributed with world size 1 on a free local TCP port (no-op if initialised)."""
    if torch.distributed.is_initialized():
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.distributed.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
