"""Colocated weight sync by handles: the trainer packs each bucket into a shared buffer and hands the
generator worker a handle to it, never the bytes.

On GPU the buffer is device memory and the handle is a CUDA IPC handle (the worker on the same GPU
maps the trainer's buffer and loads from it: one device-local copy into its parameters); on CPU the
buffer is a shared-memory segment and the handle names it. Both come from torch's own
`torch.multiprocessing` tensor reductions (``reduce_tensor``), pickled with the ``file_system``
strategy on CPU so that any process of the machine can open them, not only a forked child.

Double-buffered: the sender owns ``slots`` (2) buffers of ``buffer_bytes`` each. Bucket k goes to
slot k mod 2; before a slot is packed again the sender waits for the receiver's acknowledgement that
it loaded the bucket that slot held, so packing bucket k+1 overlaps the worker loading bucket k.

The channel is a Unix socket of this machine (`multiprocessing.connection`, a random key per sender)
carrying small JSON messages: per bucket ``{"slot", "header", "handle"?}`` (the handle only the first
time a slot is used in a sync), the receiver's ``{"ack": slot}``, and ``{"end": true}``. Handles are
unpickled with an unpickler that accepts nothing but torch's own rebuild functions and types.

A CUDA IPC handle cannot be opened by the process that made it: when the generator runs in the
sending trainer's process (one GPU), the receiver takes the very buffer the sender registered in
this process (`_LOCAL`) instead; on CPU the shared-memory handle is opened even then.

Torch only (no vLLM): `engine.backends.vllm_worker` uses the receiver inside vLLM's workers.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import socket
import tempfile
import time
from collections import deque
from multiprocessing.connection import Client, Connection, answer_challenge, deliver_challenge
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence

import torch

from engine.backends.base import WeightBucket
from engine.backends.weight_transfer import unpack

_ALIGN = 16  # bytes; as `weight_transfer.pack`: every tensor can be viewed in its dtype
#: Slack each buffer keeps beyond the largest bucket for the 16-byte alignment of its tensors.
ALIGN_SLACK = 1 << 20
SLOTS = 2
#: Device buffers of the senders in this process, by (socket path, slot): what a receiver in the same
#: process takes instead of opening a CUDA IPC handle.
_LOCAL: dict[tuple[str, int], torch.Tensor] = {}


def buffer_bytes_for(bucket_bytes: int, largest_tensor_bytes: int) -> int:
    """Bytes one buffer needs: the largest bucket `engine.backends.manifest.bucketed` makes (a
    bucket, or one tensor larger than a bucket) plus the alignment slack."""
    return max(int(bucket_bytes), int(largest_tensor_bytes)) + ALIGN_SLACK


# -- handles ------------------------------------------------------------------------------------

def share(buffer: torch.Tensor) -> bytes:
    """A handle to ``buffer``'s memory that another process of this machine can open (`open_handle`):
    torch's reduction of the tensor, CUDA IPC for a device tensor, a named shared-memory segment
    (``file_system`` strategy) for a CPU one. The caller keeps ``buffer`` alive while it is in use."""
    import torch.multiprocessing as tmp
    from multiprocessing.reduction import ForkingPickler
    from torch.multiprocessing.reductions import reduce_tensor

    old = tmp.get_sharing_strategy()
    if not buffer.is_cuda:
        tmp.set_sharing_strategy("file_system")
    try:
        return bytes(ForkingPickler.dumps(reduce_tensor(buffer)))  # (rebuild function, its arguments)
    finally:
        tmp.set_sharing_strategy(old)


class _TorchOnly(pickle.Unpickler):
    """Only torch's rebuild functions and types: a handle is data, never code to run."""

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch" or module.startswith("torch."):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"a weight handle may not name {module}.{name}")


#: Position of the device index among `torch.multiprocessing.reductions.rebuild_cuda_tensor`'s arguments.
_CUDA_DEVICE_ARG = 6


def open_handle(handle: bytes, cuda_index: Optional[int] = None) -> torch.Tensor:
    """The tensor a `share` handle names, mapped (not copied) into this process. ``cuda_index``: this
    process's index of the GPU the handle lives on (processes may number GPUs differently)."""
    rebuild, args = _TorchOnly(io.BytesIO(handle)).load()
    if getattr(rebuild, "__name__", "") not in ("rebuild_tensor", "rebuild_cuda_tensor"):
        raise pickle.UnpicklingError(f"a weight handle rebuilt by {rebuild!r}")
    if rebuild.__name__ == "rebuild_cuda_tensor" and cuda_index is not None:
        args = list(args)
        args[_CUDA_DEVICE_ARG] = cuda_index
    return rebuild(*args)


def _make_buffer(nbytes: int, device: torch.device) -> torch.Tensor:
    if device.type == "cuda":
        return torch.empty(nbytes, dtype=torch.uint8, device=device)
    import torch.multiprocessing as tmp

    old = tmp.get_sharing_strategy()
    tmp.set_sharing_strategy("file_system")
    try:
        return torch.empty(nbytes, dtype=torch.uint8).share_memory_()
    finally:
        tmp.set_sharing_strategy(old)


def pack_into(bucket: WeightBucket, buffer: torch.Tensor) -> dict[str, Any]:
    """Copy ``bucket``'s tensors into ``buffer`` back to back (each at a multiple of 16 bytes, as
    `weight_transfer.pack` lays them out, on the buffer's device); returns the header
    `weight_transfer.unpack` reads. Raises `ValueError` when the bucket does not fit."""
    entries, offset = [], 0
    cap = buffer.numel()
    with torch.no_grad():
        for name, t in bucket:
            offset += -offset % _ALIGN
            nbytes = t.numel() * t.element_size()
            if offset + nbytes > cap:
                raise ValueError(f"bucket does not fit its weight-sync buffer ({cap} bytes) at '{name}' "
                                 f"({nbytes} bytes at offset {offset}): the plan's weight_sync.buffer_bytes is too small")
            if nbytes:
                buffer[offset:offset + nbytes].view(t.dtype).view(t.shape).copy_(t.detach())
            entries.append({"name": name, "dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape),
                            "offset": offset, "nbytes": int(nbytes)})
            offset += nbytes
    return {"tensors": entries, "nbytes": offset}


def _send(conn: Connection, obj: dict) -> None:
    conn.send_bytes(json.dumps(obj).encode())


def _recv(conn: Connection) -> dict:
    return json.loads(conn.recv_bytes().decode())


def _device_uuid(device: torch.device) -> Optional[str]:
    if device.type != "cuda":
        return None
    return str(torch.cuda.get_device_properties(device).uuid)


class ChannelClosed(RuntimeError):
    """The other end of a handle channel went away mid-stream."""


# -- sender (trainer side) ----------------------------------------------------------------------

class HandleSender:
    """The trainer rank's end: a Unix socket a receiver connects to once per sync, and the buffers.

    device: where the buffers live (the trainer's device: "cuda:0" or "cpu"). buffer_bytes: one
    buffer's size (`buffer_bytes_for`); ``slots`` of them, allocated when first used. Device buffers
    are freed at the end of each sync (the memory goes back before the generator's KV cache wakes);
    shared-memory segments are kept for the next sync (making one costs far more than filling it).
    ``channel`` is what the receiver needs: (socket path, key as hex).
    """

    def __init__(self, device: str, buffer_bytes: int, slots: int = SLOTS) -> None:
        self.device = torch.device(device)
        self.buffer_bytes, self.slots = int(buffer_bytes), int(slots)
        self._dir = tempfile.mkdtemp(prefix="engine-handles-")
        self.address = os.path.join(self._dir, "weights.sock")
        self._key = os.urandom(16)
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(self.address)
        self._server.listen(1)
        #: bytes of buffers allocated in the last sync (what the memory ledger charges)
        self.allocated_bytes = 0
        self._kept: list[Optional[torch.Tensor]] = [None] * self.slots

    @property
    def channel(self) -> tuple[str, str]:
        return self.address, self._key.hex()

    def _accept(self, timeout_s: float, alive: Optional[Callable[[], bool]]) -> Connection:
        deadline = time.monotonic() + timeout_s
        self._server.settimeout(1.0)
        while True:
            try:
                sock, _ = self._server.accept()
                break
            except socket.timeout:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no weight receiver connected to {self.address} within {timeout_s:.0f} s")
                if alive is not None and not alive():
                    raise ChannelClosed("the weight receiver stopped before connecting")
        sock.settimeout(None)
        conn = Connection(sock.detach())
        deliver_challenge(conn, self._key)  # the receiver proves it holds the key, then we do
        answer_challenge(conn, self._key)
        return conn

    def send(self, buckets: Iterable[WeightBucket], names: Optional[Sequence[str]] = None,
             timeout_s: float = 300.0, alive: Optional[Callable[[], bool]] = None) -> int:
        """Hand every bucket to the receiver that connects, double-buffered; returns tensors sent.

        ``names``: when given, only these tensors are sent (tests of the receiver's manifest check).
        ``alive``: polled while waiting for the receiver to connect (False: it failed; stop)."""
        keep = set(names) if names is not None else None
        conn = self._accept(timeout_s, alive)
        buffers = self._kept if self.device.type == "cpu" else [None] * self.slots
        shared: set[int] = set()
        inflight: deque[int] = deque()
        sent = 0
        try:
            for bucket in buckets:
                if keep is not None:
                    bucket = [(n, t) for n, t in bucket if n in keep]
                if not bucket:
                    continue
                if len(inflight) == self.slots:
                    self._ack(conn, inflight)
                slot = next(i for i in range(self.slots) if i not in inflight)
                if buffers[slot] is None:
                    buffers[slot] = _make_buffer(self.buffer_bytes, self.device)
                header = pack_into(bucket, buffers[slot])
                if self.device.type == "cuda":
                    torch.cuda.current_stream(self.device).synchronize()  # the copies land before the worker reads
                msg: dict[str, Any] = {"slot": slot, "header": header}
                if slot not in shared:
                    msg["handle"] = share(buffers[slot]).hex()
                    msg["uuid"] = _device_uuid(self.device)
                    msg["pid"] = os.getpid()
                    if self.device.type == "cuda":
                        _LOCAL[(self.address, slot)] = buffers[slot]
                    shared.add(slot)
                _send(conn, msg)
                inflight.append(slot)
                sent += len(bucket)
            while inflight:
                self._ack(conn, inflight)
            _send(conn, {"end": True})
            _recv(conn)  # {"done": true}: the receiver dropped its mappings
        except (EOFError, OSError) as e:
            raise ChannelClosed(f"the weight receiver closed the channel mid-stream ({type(e).__name__})") from e
        finally:
            self.allocated_bytes = sum(b.numel() for b in buffers if b is not None)
            for slot in range(self.slots):
                _LOCAL.pop((self.address, slot), None)
            conn.close()
            del buffers  # device buffers go; shared-memory ones stay in self._kept
        return sent

    @staticmethod
    def _ack(conn: Connection, inflight: deque) -> None:
        msg = _recv(conn)
        if msg.get("ack") != inflight[0]:
            raise ChannelClosed(f"weight receiver acknowledged {msg} while slot {inflight[0]} was due")
        inflight.popleft()

    def close(self) -> None:
        self._kept = [None] * self.slots
        try:
            self._server.close()
        finally:
            shutil.rmtree(self._dir, ignore_errors=True)


# -- receiver (generator worker side) -----------------------------------------------------------

def _local_cuda_index(uuid: Optional[str]) -> Optional[int]:
    if uuid is None or not torch.cuda.is_available():
        return None
    for i in range(torch.cuda.device_count()):
        if str(torch.cuda.get_device_properties(i).uuid) == uuid:
            return i
    return None


class HandleReceiver:
    """The generator worker's end of one sync: connect, map each slot once, yield the buckets."""

    def __init__(self, address: str, key_hex: str) -> None:
        self.address = address
        self.conn = Client(address, family="AF_UNIX", authkey=bytes.fromhex(key_hex))

    def receive(self) -> Iterator[WeightBucket]:
        """Each bucket as views into the sender's buffer, until the sender's end marker.

        The bucket's memory is handed back (acknowledged) when the loop asks for the next one, and
        the sender then packs another bucket into it: copy anything that must outlive one turn."""
        slots: dict[int, torch.Tensor] = {}
        try:
            while True:
                msg = _recv(self.conn)
                if msg.get("end"):
                    break
                slot = int(msg["slot"])
                if "handle" in msg:
                    own = msg.get("pid") == os.getpid() and (self.address, slot) in _LOCAL
                    slots[slot] = _LOCAL[(self.address, slot)] if own else self._open(msg)
                header = msg["header"]
                yield unpack(header, slots[slot][:header["nbytes"]])
                _send(self.conn, {"ack": slot})
        finally:
            slots.clear()  # drop the mappings before telling the sender it may free the buffers
        _send(self.conn, {"done": True})

    @staticmethod
    def _open(msg: dict) -> torch.Tensor:
        return open_handle(bytes.fromhex(msg["handle"]), _local_cuda_index(msg.get("uuid")))

    def close(self) -> None:
        self.conn.close()
