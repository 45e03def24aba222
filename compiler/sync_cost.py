"""Cost model of the weight sync trainer -> generator, per transport (seconds; bytes; bytes/s).

Pure functions, hand-checked in ``tests/compiler/test_sync_cost.py`` and measured against this
machine by ``bench/sync/bench_sync.py``.

* **broadcast** (gloo through host memory, NCCL between devices): a store-and-forward tree. Every
  receiver gets the whole model, and the tree takes ``ceil(log2(1 + receivers))`` rounds of every
  bucket, each round at one link's bandwidth: ``rounds x model bytes / link``.
* **handles** (colocated: CUDA IPC on GPU, shared memory on CPU): the trainer rank copies each
  bucket into a buffer on its own device (one local copy) and the generator worker on that device
  loads its parameters from it (its load, a second local copy, which every transport pays): each
  device moves the model through its own memory twice at ``copy`` bandwidth, all devices at once.
* **in_process** with a module shared by trainer and generator (the hf generator): nothing.

Every transport first pays the export's gathers: each trainer rank assembles full tensors from its
TP group (an all-gather over NVLink: (tp-1)/tp of the model arrives) and from the other pipeline
stages (a broadcast: (pp-1)/pp of the model arrives, over the inter-node link when the stages span
nodes).
"""

from __future__ import annotations

import math

#: Buffers a handle sender packs into in turn (double-buffered: packing overlaps the worker's load).
HANDLE_BUFFERS = 2


def tree_rounds(receivers: int) -> int:
    """Rounds of a store-and-forward broadcast tree from one sender to ``receivers``: ceil(log2(1 + n))."""
    return math.ceil(math.log2(1 + receivers)) if receivers > 0 else 0


def broadcast_seconds(model_bytes: float, receivers: int, link_bw: float) -> float:
    """A tree broadcast of ``model_bytes`` to ``receivers`` processes over links of ``link_bw`` B/s."""
    return tree_rounds(receivers) * model_bytes / link_bw


def handles_seconds(model_bytes: float, copy_bw: float, copies: int = 2) -> float:
    """Hand-over by handles on one device: ``copies`` passes of the model through its memory (the pack
    into the buffer, the worker's load out of it) at ``copy_bw`` B/s (bytes copied per second)."""
    return copies * model_bytes / copy_bw


def export_gather_seconds(model_bytes: float, tp: int, pp: int, nvlink_bw: float, stage_link_bw: float) -> float:
    """The export's gathers on one trainer rank: the TP all-gather ((tp-1)/tp of the model over
    ``nvlink_bw``) and the PP broadcast ((pp-1)/pp of it over ``stage_link_bw``)."""
    return model_bytes * ((tp - 1) / tp / nvlink_bw + (pp - 1) / pp / stage_link_bw)


def sleep_level(requested: int, sleep_mode: bool, sync_overwrites_all: bool = True) -> int:
    """The vLLM sleep level a colocated plan runs: none without sleep mode or when the spec asks for
    0; level 2 (weights dropped) when the next sync overwrites every weight, since level 1 would copy
    them to host and back only for the sync to replace them; the requested level otherwise. Every
    sync of this engine streams the trainer's full manifest, so training plans get level 2."""
    if not sleep_mode or requested == 0:
        return 0
    return 2 if sync_overwrites_all else requested


def sleep_copy_seconds(weight_bytes_per_gpu: float, sleep_level: int, pcie_bw: float) -> float:
    """vLLM sleep level 1 copies a GPU's weights to host and back once per step (level 2 drops them,
    level 0 keeps them): ``2 x weights / PCIe`` at level 1, else 0."""
    return 2.0 * weight_bytes_per_gpu / pcie_bw if sleep_level == 1 else 0.0


def handle_buffer_bytes(bucket_bytes: int, largest_tensor_bytes: int, slack: int = 1 << 20) -> int:
    """One handle buffer: the largest bucket the stream makes (a bucket, or one larger tensor) plus
    ``slack`` for the 16-byte alignment of its tensors (`engine.backends.handle_transport`)."""
    return max(int(bucket_bytes), int(largest_tensor_bytes)) + int(slack)
