"""The handle transport (`engine/backends/handle_transport.py`) on CPU: shared-memory handles made by
torch's reductions, the same code path as CUDA IPC on GPU. A bucket crosses into another process
without its bytes going through the channel, every dtype and shape intact; the double-buffered
sender never overwrites a bucket the receiver has not acknowledged; a handle that names anything
but torch's rebuild functions is refused; a bucket too big for its buffer, and a receiver that goes
away mid-stream, stop the sender with the reason."""

from __future__ import annotations

import multiprocessing as mp
import pickle
import threading

import pytest
import torch

from engine.backends.handle_transport import (ChannelClosed, HandleReceiver, HandleSender, open_handle, pack_into,
                                              share)


def _buckets():
    g = torch.Generator().manual_seed(0)
    return [
        [("a.weight", torch.randn(64, 32, generator=g)), ("a.bias", torch.randn(32, generator=g).to(torch.bfloat16))],
        [("b.mask", torch.tensor([True, False, True])), ("b.ids", torch.arange(7, dtype=torch.int64))],
        [("c.weight", torch.randn(3, 5, 7, generator=g).to(torch.float16)), ("c.empty", torch.zeros(0, 4))],
        [("d.weight", torch.randn(1000, generator=g))],
    ]


def _receive_in_child(channel, out) -> None:
    rx = HandleReceiver(*channel)
    got = []
    for bucket in rx.receive():
        got.append([(n, t.clone(), t.untyped_storage().data_ptr()) for n, t in bucket])
    rx.close()
    # by value (plain pickle bytes): a tensor put on a multiprocessing queue travels as a shared-memory fd
    # that this process must still serve when the parent reads it, and this process is about to exit
    out.put(pickle.dumps([[(n, t) for n, t, _ in b] for b in got]))


@pytest.mark.slow  # a spawned process imports torch: minutes on a busy 2-core machine
def test_buckets_reach_another_process_by_handle_intact():
    sender = HandleSender("cpu", 64 << 10)
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    child = ctx.Process(target=_receive_in_child, args=(sender.channel, out))
    child.start()
    try:
        assert sender.send(_buckets()) == 7
        got = pickle.loads(out.get(timeout=300))
    finally:
        child.join(timeout=60)
        sender.close()
    for sent, recv in zip(_buckets(), got, strict=True):
        for (n, t), (m, u) in zip(sent, recv, strict=True):
            assert n == m and t.dtype == u.dtype and t.shape == u.shape and torch.equal(t, u)
    assert sender.allocated_bytes == 2 * (64 << 10)  # two buffers, whatever the number of buckets


def test_the_sender_waits_for_the_acknowledgement_before_reusing_a_buffer():
    """Bucket k's views stay valid while the loop body runs, even if the sender has packed k+1 meanwhile;
    slot k mod 2 is repacked only once the receiver asked for the next bucket after k."""
    sender = HandleSender("cpu", 8 << 10)
    seen = []

    def receive():
        rx = HandleReceiver(*sender.channel)
        for bucket in rx.receive():
            (name, t), = bucket
            before = t.clone()
            threading.Event().wait(0.05)  # the sender packs the other buffer meanwhile
            seen.append((name, torch.equal(before, t), float(t[0])))
        rx.close()

    buckets = [[(f"t{i}", torch.full((100,), float(i)))] for i in range(6)]
    th = threading.Thread(target=receive)
    th.start()
    try:
        assert sender.send(buckets) == 6
    finally:
        th.join()
        sender.close()
    assert seen == [(f"t{i}", True, float(i)) for i in range(6)]


def test_a_handle_naming_anything_but_torch_is_refused():
    t = torch.arange(4, dtype=torch.uint8).share_memory_()
    assert torch.equal(open_handle(share(t)), t)

    class Evil:
        def __reduce__(self):
            import os

            return (os.getcwd, ())

    with pytest.raises(pickle.UnpicklingError, match="may not name"):
        open_handle(pickle.dumps((Evil(), ())))


def test_a_bucket_larger_than_its_buffer_is_named():
    buf = torch.zeros(256, dtype=torch.uint8)
    with pytest.raises(ValueError, match="at 'big'.*buffer_bytes is too small"):
        pack_into([("small", torch.zeros(8)), ("big", torch.zeros(100))], buf)
    header = pack_into([("x", torch.ones(3)), ("y", torch.ones(1, dtype=torch.float16))], buf)
    assert [e["offset"] for e in header["tensors"]] == [0, 16]  # every tensor 16-byte aligned


def test_a_receiver_that_goes_away_mid_stream_stops_the_sender():
    sender = HandleSender("cpu", 8 << 10)

    def receive_one_then_leave():
        rx = HandleReceiver(*sender.channel)
        for _ in rx.receive():
            break
        rx.close()

    th = threading.Thread(target=receive_one_then_leave)
    th.start()
    try:
        with pytest.raises(ChannelClosed, match="closed the channel"):
            sender.send([[(f"t{i}", torch.zeros(100))] for i in range(5)])
    finally:
        th.join()
        sender.close()


def test_a_receiver_that_never_connects_stops_the_sender():
    sender = HandleSender("cpu", 8 << 10)
    try:
        with pytest.raises(ChannelClosed, match="stopped before connecting"):
            sender.send([[("t", torch.zeros(1))]], alive=lambda: False)
    finally:
        sender.close()
