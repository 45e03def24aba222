"""Pure parts of the vLLM backend (no engine): stop-string cut, per-call seeds, engine arguments
from a plan, bucket packing."""

from __future__ import annotations

import torch

from engine.backends.vllm_generator import call_seeds, cpu_kv_cache_bytes, cpu_threads_bind, stop_cut
from engine.backends.weight_transfer import pack, pack_bytes, unpack, unpack_bytes


def test_stop_cut_is_the_hf_generators_rule():
    decode = lambda ids: "".join("abcdefgh"[i] for i in ids)  # noqa: E731
    assert stop_cut([0, 1, 2, 3], ("cd",), decode) == 4  # ends on the token completing the string
    assert stop_cut([0, 1, 2, 3], ("bc", "ab"), decode) == 2  # the earliest stop wins
    assert stop_cut([0, 1, 2, 3], ("x",), decode) is None
    assert stop_cut([0, 1], (), decode) is None


def test_call_seeds_are_reproducible_and_distinct():
    assert call_seeds(3, 4) == call_seeds(3, 4)
    assert len(set(call_seeds(3, 64))) == 64 and call_seeds(3, 4) != call_seeds(4, 4)


def test_cpu_kv_cache_holds_the_plans_sequences():
    class C:
        num_key_value_heads, num_attention_heads, hidden_size, num_hidden_layers, head_dim = 2, 4, 256, 3, 64

    # 2 (K, V) * 3 layers * 2 heads * 64 dims * 4 bytes = 3072 bytes per token
    assert cpu_kv_cache_bytes(C, 1000, 100, 4) == 3072 * 100 * 1016
    assert cpu_kv_cache_bytes(C, 10, 1, 4) == 16 << 20


def test_threads_bind_splits_the_allowed_cores():
    bind = cpu_threads_bind(1)
    assert "|" not in bind and bind


def test_pack_roundtrip_mixed_dtypes():
    bucket = [("w", torch.randn(3, 5)), ("b16", torch.randn(7).to(torch.bfloat16)), ("i", torch.arange(4)),
              ("t", torch.randn(4, 6).t())]  # non-contiguous
    header, flat = pack(bucket)
    # offsets 0, 64, 80, 112 (16-byte aligned); 96 bytes of the last tensor
    assert flat.dtype == torch.uint8 and header["nbytes"] == flat.numel() == 112 + 96
    assert [e["offset"] for e in header["tensors"]] == [0, 64, 80, 112]
    for (n0, t0), (n1, t1) in zip(bucket, unpack(header, flat)):
        assert n0 == n1 and t0.dtype == t1.dtype and torch.equal(t0, t1)
    h, blob = pack_bytes(bucket)
    assert [n for n, _ in unpack_bytes(h, blob)] == ["w", "b16", "i", "t"]
