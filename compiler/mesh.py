"""The trainer's device mesh: which (tensor, pipeline, data)-parallel coordinates each rank holds.

One convention, Megatron-core's default order "tp-cp-ep-dp-pp": the tensor-parallel rank varies
fastest, then data-parallel, then the pipeline stage. `parallel_state.initialize_model_parallel`
builds its groups in this order, so the compiler's plan and the runtime's process groups agree.
"""

from __future__ import annotations


def coords(rank: int, tp: int, pp: int, dp: int) -> tuple[int, int, int]:
    """(tp_rank, pp_rank, dp_rank) of trainer ``rank`` (0-based, within the trainer group)."""
    if not 0 <= rank < tp * pp * dp:
        raise ValueError(f"rank {rank} outside a TP{tp} PP{pp} DP{dp} mesh of {tp * pp * dp} ranks")
    return rank % tp, rank // (tp * dp), (rank // tp) % dp


def rank_of(tp_rank: int, pp_rank: int, dp_rank: int, tp: int, dp: int) -> int:
    """Inverse of `coords`."""
    return pp_rank * tp * dp + dp_rank * tp + tp_rank


def groups(tp: int, pp: int, dp: int, axis: str) -> list[list[int]]:
    """The rank lists of every ``axis`` group ("tp", "pp" or "dp"), as Megatron forms them."""
    out: dict[tuple[int, int], list[int]] = {}
    for r in range(tp * pp * dp):
        t, p, d = coords(r, tp, pp, dp)
        key = {"tp": (p, d), "pp": (t, d), "dp": (t, p)}[axis]
        out.setdefault(key, []).append(r)
    return [out[k] for k in sorted(out)]
