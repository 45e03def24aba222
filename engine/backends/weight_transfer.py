"""Moving weight buckets between processes: packing, and the split-placement broadcast group.

A bucket (HF-named full tensors) travels as one flat byte buffer plus a small JSON header (names,
dtypes, shapes, byte offsets): one message per bucket, whatever the dtypes. The same packing serves
the colocated path (bytes through vLLM's `collective_rpc`, which cannot carry tensors) and the split
path (one broadcast per bucket).

Split placement: trainer rank 0 and every generator worker form their own process group, built
straight from a TCP store (host, port, world size) so the trainer's default process group is never
touched: gloo on CPU, NCCL on GPU. Rank 0 is the sender; generator workers are ranks 1..N. The
stream is: per bucket, a header-length tensor, the header bytes, the bucket bytes; then a zero
header length that ends the stream. Torch only: importable without vLLM.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any, Iterable, Iterator, Optional, Sequence

import torch
import torch.distributed as dist

from engine.backends.base import WeightBucket

_DTYPES = {str(d).removeprefix("torch."): d for d in (
    torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int32, torch.int8, torch.uint8,
    torch.bool)}
for _name in ("float8_e4m3fn", "float8_e5m2"):
    if hasattr(torch, _name):
        _DTYPES[_name] = getattr(torch, _name)


_ALIGN = 16  # bytes


def pack(bucket: WeightBucket) -> tuple[dict[str, Any], torch.Tensor]:
    """(header, flat uint8 tensor) holding every tensor of ``bucket`` back to back, each starting at a
    multiple of 16 bytes."""
    entries, chunks, offset = [], [], 0
    for name, t in bucket:
        t = t.detach().to("cpu").contiguous()
        raw = t.reshape(-1).view(torch.uint8) if t.numel() else torch.empty(0, dtype=torch.uint8)
        pad = -offset % _ALIGN  # every tensor starts aligned, so unpacking can view it in its dtype
        if pad:
            chunks.append(torch.zeros(pad, dtype=torch.uint8))
            offset += pad
        entries.append({"name": name, "dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape),
                        "offset": offset, "nbytes": int(raw.numel())})
        chunks.append(raw)
        offset += int(raw.numel())
    flat = torch.cat(chunks) if chunks else torch.empty(0, dtype=torch.uint8)
    return {"tensors": entries, "nbytes": offset}, flat


def unpack(header: dict[str, Any], flat: torch.Tensor) -> WeightBucket:
    """Inverse of `pack`: the bucket's (name, tensor) pairs as views into ``flat``."""
    out: WeightBucket = []
    for e in header["tensors"]:
        raw = flat[e["offset"]:e["offset"] + e["nbytes"]]
        out.append((e["name"], raw.view(_DTYPES[e["dtype"]]).reshape(e["shape"])))
    return out


def pack_bytes(bucket: WeightBucket) -> tuple[str, bytes]:
    """`pack` as (header JSON, bytes): what a `collective_rpc` message can carry."""
    header, flat = pack(bucket)
    return json.dumps(header), flat.numpy().tobytes()


def unpack_bytes(header_json: str, blob: bytes) -> WeightBucket:
    """Inverse of `pack_bytes`."""
    flat = torch.frombuffer(bytearray(blob), dtype=torch.uint8) if blob else torch.empty(0, dtype=torch.uint8)
    return unpack(json.loads(header_json), flat)


class BroadcastGroup:
    """A standalone broadcast group (rank 0 sends) made from a TCP store, outside torch's default group.

    host/port: the TCP store rank 0 serves. world_size: 1 + the number of generator workers.
    backend: "gloo" (CPU tensors) or "nccl" (CUDA tensors, ``device`` set). All ranks must construct
    the group at about the same time (construction waits for every rank, up to ``timeout_s``).
    """

    def __init__(self, host: str, port: int, world_size: int, rank: int, backend: str = "gloo",
                 device: str = "cpu", timeout_s: float = 300.0, name: str = "weights") -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside a group of {world_size}")
        self.rank, self.world_size, self.backend = rank, world_size, backend
        self.device = torch.device(device)
        timeout = timedelta(seconds=timeout_s)
        self._store = dist.TCPStore(host, port, world_size, is_master=(rank == 0), timeout=timeout,
                                    wait_for_workers=False)
        store = dist.PrefixStore(name, self._store)
        if backend == "gloo":
            self._pg = dist.ProcessGroupGloo(store, rank, world_size, timeout)
        elif backend == "nccl":
            self._pg = dist.ProcessGroupNCCL(store, rank, world_size)
        else:
            raise ValueError(f"unknown broadcast backend '{backend}' (gloo or nccl)")

    def _bcast(self, t: torch.Tensor) -> torch.Tensor:
        opts = dist.BroadcastOptions()
        opts.rootRank = 0
        self._pg.broadcast([t], opts).wait()
        return t

    # -- sender (rank 0) ----------------------------------------------------------------------
    def send(self, buckets: Iterable[WeightBucket], names: Optional[Sequence[str]] = None) -> int:
        """Broadcast every bucket, then the end marker; returns the tensors sent.

        ``names``: when given, only tensors with these names are sent (the rest of each bucket is
        dropped): a way to send a partial model, e.g. to test that receivers catch it."""
        if self.rank != 0:
            raise RuntimeError("only rank 0 sends")
        keep = set(names) if names is not None else None
        sent = 0
        for bucket in buckets:
            if keep is not None:
                bucket = [(n, t) for n, t in bucket if n in keep]
            if not bucket:
                continue
            header, flat = pack(bucket)
            hb = torch.frombuffer(bytearray(json.dumps(header).encode()), dtype=torch.uint8)
            self._bcast(torch.tensor([hb.numel()], dtype=torch.int64, device=self.device))
            self._bcast(hb.to(self.device))
            self._bcast(flat.to(self.device))
            sent += len(bucket)
        self._bcast(torch.zeros(1, dtype=torch.int64, device=self.device))
        return sent

    # -- receivers (ranks >= 1) ---------------------------------------------------------------
    def receive(self) -> Iterator[WeightBucket]:
        """Yield each broadcast bucket (tensors on ``device``) until the sender's end marker."""
        while True:
            n = int(self._bcast(torch.zeros(1, dtype=torch.int64, device=self.device)).item())
            if n == 0:
                return
            hb = self._bcast(torch.empty(n, dtype=torch.uint8, device=self.device))
            header = json.loads(bytes(hb.cpu().numpy()).decode())
            flat = self._bcast(torch.empty(header["nbytes"], dtype=torch.uint8, device=self.device))
            yield unpack(header, flat)

    def close(self) -> None:
        """Drop the group (the store closes with the last reference)."""
        self._pg = None
