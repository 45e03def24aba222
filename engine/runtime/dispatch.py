"""How a worker method is called across a role's ranks, declared once, on the method itself.

    class TrainerWorker:
        @dispatch(Mode.DP_SHARD)
        def update(self, batch): ...

    group.update(shards)   # rank i gets shards[dp_rank(i)]; the group returns one result per DP rank

`engine.runtime.group.WorkerGroup` reads the mode off the worker class: the driver calls
``group.<method>(...)``, never a method name as a string, and a method without a declared mode is
not callable through a group at all. Modes:

* ``ALL``: every rank runs it with the same arguments (collectives inside need all of them); the
  result is the list of every rank's return value.
* ``DP_SHARD``: rank i runs it on ``shards[dp_rank(i)]`` (the TP and PP ranks of one data-parallel
  replica get the same shard); the result is one value per DP rank, from the first rank of each
  (the others compute, take part in the collectives, and send nothing back).
* ``RANK0``: only rank 0 (methods without collectives); the result is rank 0's value.
* ``EACH``: handle j runs it with the j-th argument tuple (generator replicas, each with its slice).
"""

from __future__ import annotations

from enum import Enum
from typing import Any, Callable


class Mode(str, Enum):
    ALL = "all"
    DP_SHARD = "dp_shard"
    RANK0 = "rank0"
    EACH = "each"


#: Keyword a DP_SHARD call gets on the ranks whose result the driver does not collect.
DROP_RESULT = "_drop_result"


def dispatch(mode: Mode) -> Callable[[Callable], Callable]:
    """Declare how ``fn`` is called across a group (see the module doc)."""

    def mark(fn: Callable) -> Callable:
        if mode is not Mode.DP_SHARD:
            fn.__dispatch__ = mode
            return fn

        def sharded(self, *args: Any, _drop_result: bool = False, **kwargs: Any) -> Any:
            out = fn(self, *args, **kwargs)
            return None if _drop_result else out

        # not functools.wraps: Ray reads the signature, and ``__wrapped__`` would hide ``_drop_result``
        sharded.__name__, sharded.__qualname__, sharded.__doc__ = fn.__name__, fn.__qualname__, fn.__doc__
        sharded.__dispatch__ = mode
        return sharded

    return mark


def mode_of(cls: type, name: str) -> Mode:
    """The declared mode of ``cls.name``; `AttributeError` when the method has none."""
    fn = getattr(cls, name, None)
    mode = getattr(fn, "__dispatch__", None)
    if mode is None:
        raise AttributeError(f"{cls.__name__}.{name} is not a worker-group method (no @dispatch mode declared)")
    return mode
