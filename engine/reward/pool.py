"""A pool of killable verification processes with a hard per-item deadline.

The pool is no larger than the CPUs this process may use, and it starts workers only when items
reach it (one per ``ITEMS_PER_WORKER`` queued items): grading that the parent settles with its
fast path starts no process at all.

Each worker is a separate process holding one item at a time. The parent waits on the workers'
sockets with the earliest deadline as its timeout; a worker that has not answered by its item's
deadline (stuck in Python or in C code inside sympy alike) is killed with SIGKILL and replaced,
and its item is reported as a timeout. A worker that dies (memory limit, crash) is replaced and
its item reported as an error.

Workers are fresh interpreters (``python -c`` with the parent's ``sys.path``), not forks and not
``multiprocessing`` children: they inherit nothing from the parent (no torch, CUDA context or
threads) and do not re-import the parent's ``__main__`` (a training script), which ``spawn`` and
``forkserver`` children would do.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections import deque
from multiprocessing.connection import Connection, wait
from typing import Deque, List, Optional, Sequence, Tuple

#: Address-space limit of a worker process (MiB); an allocation beyond it is a MemoryError there.
WORKER_MEMORY_MB = int(os.environ.get("ENGINE_REWARD_WORKER_MEMORY_MB", "3072"))
#: Seconds a new worker may take to start before it counts as failed.
STARTUP_TIMEOUT_S = 120.0
#: A worker costs a fresh interpreter importing sympy (about half a CPU-second) while an item
#: costs about a millisecond: one more worker is started per this many queued items.
ITEMS_PER_WORKER = 128


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask, not the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)
_BOOT = ("import sys, json; sys.path[:0] = json.loads(sys.argv[1]); "
         "from engine.reward.pool import _worker_entry; _worker_entry()")

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
    try:  # import sympy and warm its evaluation paths before the first deadline starts
        from engine.reward.equivalence import is_equivalent as _warm
        _warm("x^2+\\sqrt{2}", "\\sqrt{2}+x^2")
    except Exception:  # noqa: BLE001
        pass
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


def _worker_entry() -> None:
    """``python -c _BOOT PATHS FD MEMORY_MB VERIFY_FN``: run ``worker_main`` on socket FD."""
    fd, memory_mb, verify_fn = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    worker_main(Connection(fd), memory_mb, verify_fn)


class _Worker:
    __slots__ = ("proc", "conn", "ready", "task", "deadline", "started")

    def __init__(self, memory_mb: int, verify_fn: str):
        parent_sock, child_sock = socket.socketpair()
        try:
            fd = child_sock.fileno()
            paths = [p for p in sys.path if isinstance(p, str)]
            self.proc = subprocess.Popen(
                [sys.executable, "-c", _BOOT, json.dumps(paths), str(fd), str(memory_mb), verify_fn],
                pass_fds=(fd,), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, close_fds=True)
        except BaseException:
            parent_sock.close()
            raise
        finally:
            child_sock.close()
        self.conn = Connection(parent_sock.detach())
        self.ready = False
        self.task: Optional[int] = None
        self.deadline = 0.0
        self.started = time.monotonic()

    def kill(self) -> None:
        try:
            self.proc.kill()
        except Exception:  # noqa: BLE001
            pass
        try:
            self.proc.wait(timeout=5)
        except Exception:  # noqa: BLE001
            pass
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
        self.size = min(size, available_cpus())   # more processes than CPUs only adds start-up cost
        self.timeout_s = float(timeout_s)
        self.memory_mb = memory_mb
        self.verify_fn = verify_fn
        self._workers: List[_Worker] = []
        self.killed = 0
        self.crashed = 0
        self.closed = False

    def _wanted(self, queued: int) -> int:
        """Workers worth having for ``queued`` items: one per ``ITEMS_PER_WORKER``, at most size."""
        if queued <= 0:
            return 0
        return min(self.size, -(-queued // ITEMS_PER_WORKER))

    def _spawn(self) -> Optional[_Worker]:
        try:
            w = _Worker(self.memory_mb, self.verify_fn)
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
        want = self._wanted(len(tasks))
        start_failures = 0
        while len(self._workers) < want:
            if self._spawn() is None:
                start_failures += 1
                break
        remaining = len(tasks)
        while remaining:
            # keep enough workers alive
            while len(self._workers) < self._wanted(remaining) and start_failures < 5:
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
            try:
                w.proc.wait(timeout=max(0.01, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            w.kill()
        self._workers.clear()
