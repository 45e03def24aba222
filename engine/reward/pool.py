"""A pool of killable verification processes with a hard per-item deadline.

Each worker is a separate process holding one item at a time. The parent waits on the workers'
pipes with the earliest deadline as its timeout; a worker that has not answered by its item's
deadline (stuck in Python or in C code inside sympy/gmpy alike) is killed with SIGKILL and
replaced, and its item is reported as a timeout. A worker that dies (memory limit, crash) is
replaced and its item reported as an error. Workers come from a ``forkserver`` (Linux) that has
preloaded the parser and sympy but not the parent's ``__main__``, so the parent may hold torch and
threads, and a replacement starts in milliseconds; elsewhere ``spawn`` is used.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from collections import deque
from multiprocessing.connection import wait
from typing import Deque, List, Optional, Sequence, Tuple

#: Address-space limit of a worker process (MiB); an allocation beyond it is a MemoryError there.
WORKER_MEMORY_MB = int(os.environ.get("ENGINE_REWARD_WORKER_MEMORY_MB", "3072"))
#: Seconds a new worker may take to start before it counts as failed.
STARTUP_TIMEOUT_S = 120.0
_PRELOAD = ["engine.reward.equivalence", "engine.reward.parser", "sympy", "mpmath"]

Verdict = Tuple[str, bool]   # (status, correct): status in {"ok", "timeout", "error"}


def _limit_memory(mb: int) -> None:
    if mb <= 0:
        return
    try:
        import resource
        limit = mb * 1024 * 1024
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        if hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    except (ImportError, ValueError, OSError):
        pass


DEFAULT_VERIFY_FN = "engine.reward.equivalence:is_equivalent"


def _resolve(path: str):
    import importlib
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def worker_main(conn, memory_mb: int, verify_fn: str = DEFAULT_VERIFY_FN) -> None:
    """Worker loop: receive ``(task_id, pred, gold)``, answer ``(task_id, status, correct)``."""
    _limit_memory(memory_mb)
    is_equivalent = _resolve(verify_fn)
    conn.send(("ready", None, None))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        tid, pred, gold = msg
        try:
            ok = bool(is_equivalent(pred, gold))
            reply = (tid, "ok", ok)
        except MemoryError:
            reply = (tid, "error", False)
        except BaseException:  # noqa: BLE001 - any failure of one item is that item's error
            reply = (tid, "error", False)
        try:
            conn.send(reply)
        except (OSError, ValueError):
            return


def _context():
    methods = mp.get_all_start_methods()
    if "forkserver" in methods:
        ctx = mp.get_context("forkserver")
        try:
            ctx.set_forkserver_preload(_PRELOAD)
        except Exception:  # noqa: BLE001
            pass
        return ctx
    return mp.get_context("spawn")


class _Worker:
    __slots__ = ("proc", "conn", "ready", "task", "deadline", "started")

    def __init__(self, ctx, memory_mb: int, verify_fn: str):
        parent, child = ctx.Pipe(duplex=True)
        self.proc = ctx.Process(target=worker_main, args=(child, memory_mb, verify_fn), daemon=True,
                                name="reward-verifier")
        self.proc.start()
        child.close()
        self.conn = parent
        self.ready = False
        self.task: Optional[int] = None
        self.deadline = 0.0
        self.started = time.monotonic()

    def kill(self) -> None:
        try:
            self.proc.kill()
        except Exception:  # noqa: BLE001
            pass
        self.proc.join(timeout=5)
        try:
            self.conn.close()
        except Exception:  # noqa: BLE001
            pass


class VerifierPool:
    """``verify(tasks)`` runs ``is_equivalent`` on each (pred, gold) with a hard deadline."""

    def __init__(self, size: int, timeout_s: float, memory_mb: int = WORKER_MEMORY_MB,
                 verify_fn: str = DEFAULT_VERIFY_FN):
        """``verify_fn``: ``"module:function"`` run on each item in the workers (tests swap it)."""
        if size < 1:
            raise ValueError("pool size must be >= 1")
        self.size = size
        self.timeout_s = float(timeout_s)
        self.memory_mb = memory_mb
        self.verify_fn = verify_fn
        self._ctx = _context()
        self._workers: List[_Worker] = []
        self.killed = 0
        self.crashed = 0
        self.closed = False

    def _spawn(self) -> Optional[_Worker]:
        try:
            w = _Worker(self._ctx, self.memory_mb, self.verify_fn)
        except Exception:  # noqa: BLE001 - cannot start a process: caller degrades
            return None
        self._workers.append(w)
        return w

    def _drop(self, w: _Worker) -> None:
        w.kill()
        if w in self._workers:
            self._workers.remove(w)

    def verify(self, tasks: Sequence[Tuple[str, str]]) -> List[Verdict]:
        if self.closed:
            raise RuntimeError("pool is closed")
        results: List[Optional[Verdict]] = [None] * len(tasks)
        queue: Deque[int] = deque(range(len(tasks)))
        want = min(self.size, len(tasks))
        start_failures = 0
        while len(self._workers) < want:
            if self._spawn() is None:
                start_failures += 1
                break
        remaining = len(tasks)
        while remaining:
            # keep enough workers alive
            while len(self._workers) < min(self.size, remaining) and start_failures < 5:
                if self._spawn() is None:
                    start_failures += 1
            if not self._workers:  # no process could be started: every item is an error
                for t in queue:
                    results[t] = ("error", False)
                break
            # dispatch
            for w in self._workers:
                if w.ready and w.task is None and queue:
                    t = queue.popleft()
                    try:
                        w.conn.send((t, tasks[t][0], tasks[t][1]))
                    except (OSError, ValueError):
                        queue.appendleft(t)
                        self._drop(w)
                        self.crashed += 1
                        break
                    w.task = t
                    w.deadline = time.monotonic() + self.timeout_s
            now = time.monotonic()
            waits = [w.deadline - now for w in self._workers if w.task is not None]
            waits += [w.started + STARTUP_TIMEOUT_S - now for w in self._workers if not w.ready]
            timeout = max(0.0, min(waits)) if waits else 0.05
            ready = wait([w.conn for w in self._workers], timeout=min(timeout, 5.0))
            by_conn = {id(w.conn): w for w in self._workers}
            for c in ready:
                w = by_conn.get(id(c))
                if w is None:
                    continue
                try:
                    msg = w.conn.recv()
                except (EOFError, OSError):
                    # the worker died: its item (if any) is an error
                    if w.task is not None:
                        results[w.task] = ("error", False)
                        remaining -= 1
                    else:
                        start_failures += 1
                    self.crashed += 1
                    self._drop(w)
                    continue
                if msg[0] == "ready":
                    w.ready = True
                    start_failures = 0
                    continue
                tid, status, ok = msg
                if tid == w.task:
                    results[tid] = (status, bool(ok))
                    remaining -= 1
                    w.task = None
            # deadlines
            now = time.monotonic()
            for w in list(self._workers):
                if w.task is not None and now >= w.deadline:
                    results[w.task] = ("timeout", False)
                    remaining -= 1
                    self.killed += 1
                    self._drop(w)
                elif not w.ready and now - w.started > STARTUP_TIMEOUT_S:
                    start_failures += 1
                    self._drop(w)
            if start_failures >= 5 and not any(w.ready for w in self._workers):
                for t in queue:
                    results[t] = ("error", False)
                remaining -= len(queue)
                queue.clear()
                if not any(w.task is not None for w in self._workers):
                    break
        return [r if r is not None else ("error", False) for r in results]

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for w in self._workers:
            try:
                w.conn.send(None)
            except Exception:  # noqa: BLE001
                pass
        deadline = time.monotonic() + 2.0
        for w in self._workers:
            w.proc.join(timeout=max(0.0, deadline - time.monotonic()))
            if w.proc.is_alive():
                w.kill()
            else:
                try:
                    w.conn.close()
                except Exception:  # noqa: BLE001
                    pass
        self._workers.clear()
