"""How many torch threads a CPU run uses: ``cluster.cpu_threads`` (an integer, or ``auto``).

``auto`` takes the CPUs this process may run on (its affinity mask, which containers and ``taskset``
narrow) and leaves out those other processes keep busy (the 1-minute load average). On a 2-core
machine kept busy by other work, one thread is then chosen: torch's threads otherwise wait on each
other and a run is several times slower than single-threaded.
"""

from __future__ import annotations

import os
from typing import Optional, Union

Setting = Union[int, str, None]


def usable_cpus() -> int:
    """CPUs this process may run on (``os.sched_getaffinity``; ``os.cpu_count`` where unavailable)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def load_average() -> float:
    """The 1-minute load average (runnable processes); 0 where the OS does not report it."""
    try:
        return float(os.getloadavg()[0])
    except (AttributeError, OSError):
        return 0.0


def auto_threads(cpus: int, load: float) -> int:
    """Threads for ``cpus`` usable CPUs of which ``load`` are busy on average: the free CPUs,
    rounded to the nearest whole CPU, at least 1 and at most ``cpus``."""
    free = cpus - max(0.0, load)
    return max(1, min(cpus, int(free + 0.5)))


def resolve_threads(setting: Setting) -> Optional[int]:
    """The thread count for ``cluster.cpu_threads``: an integer as given, ``auto`` from
    `auto_threads`; None (older plans) leaves torch's default."""
    if setting is None:
        return None
    if setting == "auto":
        return auto_threads(usable_cpus(), load_average())
    return int(setting)


def apply_threads(setting: Setting) -> Optional[int]:
    """Set torch's intra-op threads from ``cluster.cpu_threads``; returns the count (None: unchanged)."""
    n = resolve_threads(setting)
    if n:
        import torch

        torch.set_num_threads(n)
    return n
