"""A time bound for a call running in this thread: the grader's in-process mode (``workers=0``).

`call_with_deadline` runs ``fn`` in the calling thread while a timer thread waits; when the time is up
the timer raises `VerifyTimeout` inside the calling thread (CPython's ``PyThreadState_SetAsyncExc``),
which unwinds the call at its next Python bytecode. sympy and mpmath are Python, so a runaway
simplification or evaluation stops within moments. A single long operation in C (one huge integer
multiplication) finishes before the exception lands: the parser's size guards
(`engine.reward.parser`) refuse the inputs that would start one. Only the worker pool
(`engine.reward.pool`) can kill anything; this bound is for the in-process mode.
"""

from __future__ import annotations

import ctypes
import threading
from typing import Any, Callable

_raise_in = ctypes.PYFUNCTYPE(ctypes.c_int, ctypes.c_ulong, ctypes.py_object)(
    ("PyThreadState_SetAsyncExc", ctypes.pythonapi))
_clear_in = ctypes.PYFUNCTYPE(ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p)(
    ("PyThreadState_SetAsyncExc", ctypes.pythonapi))  # NULL: clear a pending exception


class VerifyTimeout(BaseException):
    """Raised inside a call that ran past its deadline (a BaseException, so that ``except Exception``
    blocks in sympy do not swallow it)."""


def call_with_deadline(fn: Callable[..., Any], args: tuple, timeout_s: float) -> tuple[bool, Any]:
    """``(True, fn(*args))``, or ``(False, None)`` when the call took longer than ``timeout_s`` seconds.

    Exceptions of ``fn`` propagate. The timer can only fire while the call runs: ``done`` is set
    under the lock before the call's result is used, and a timeout delivered after that point is
    cleared, so it never surfaces in the caller's later code.
    """
    tid = threading.get_ident()
    lock = threading.Lock()
    state = {"done": False, "fired": False}

    def fire() -> None:
        with lock:
            if not state["done"]:
                state["fired"] = True
                _raise_in(tid, VerifyTimeout)

    timer = threading.Timer(timeout_s, fire)
    timer.daemon = True
    try:
        timer.start()
        try:
            result = fn(*args)
        finally:
            with lock:
                state["done"] = True
        timer.cancel()
        if state["fired"]:
            _clear_in(tid, None)  # a timeout that landed too late (or was swallowed): never seen later
            return False, None  # it fired: whatever the call returned after that is not trusted
        return True, result
    except VerifyTimeout:
        timer.cancel()
        with lock:
            state["done"] = True
        _clear_in(tid, None)
        return False, None
