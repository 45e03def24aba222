"""Run a function on N local ranks (torch.multiprocessing spawn, gloo) and collect each rank's result.

The function must live in an importable module (spawned children re-import it) and return something
picklable. A rank that raises makes `run_ranks` raise with that rank's traceback.
"""

from __future__ import annotations

import faulthandler
import os
import socket
import tempfile
import traceback
from typing import Any, Callable

import torch
import torch.multiprocessing as mp


#: Seconds after which a rank dumps its stack and exits (the machine is slow and shared: generous).
HANG_S = int(os.environ.get("MEGATRON_TEST_HANG_S", "1500"))


_keep: list = []  # the stack file stays open for faulthandler


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, fn: Callable, world: int, port: int, out_dir: str, args: tuple, init_group: bool) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    path = os.path.join(out_dir, f"rank{rank}.pt")
    # a hang (a collective one rank never joins) becomes a failure with every rank's stack
    _keep.append(open(os.path.join(out_dir, f"rank{rank}.stack"), "w"))
    faulthandler.dump_traceback_later(HANG_S, exit=True, file=_keep[-1])
    try:
        if init_group:
            torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
        result = fn(rank, world, *args)
        torch.save({"ok": True, "result": result}, path)
    except BaseException:  # noqa: BLE001 - reported to the parent
        torch.save({"ok": False, "error": traceback.format_exc()}, path)
        raise
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def run_ranks(fn: Callable, world: int, *args: Any, init_group: bool = True) -> list[Any]:
    """``fn(rank, world, *args)`` on ``world`` gloo ranks; returns the results in rank order.
    ``init_group=False`` leaves torch.distributed uninitialised (the function's own business)."""
    with tempfile.TemporaryDirectory() as out:
        try:
            mp.start_processes(_entry, args=(fn, world, free_port(), out, args, init_group), nprocs=world, join=True,
                               start_method="spawn")
        except Exception:
            pass  # the per-rank files say why
        results = []
        for r in range(world):
            path = os.path.join(out, f"rank{r}.pt")
            if not os.path.exists(path):
                stack = os.path.join(out, f"rank{r}.stack")
                why = open(stack).read() if os.path.exists(stack) else ""
                raise RuntimeError(f"rank {r} of {world} died without a result\n{why}")
            res = torch.load(path, weights_only=False)
            if not res["ok"]:
                raise RuntimeError(f"rank {r} of {world} failed:\n{res['error']}")
            results.append(res["result"])
        return results
