"""The Megatron trainer's input layout (`engine.backends.megatron.layout`), hand-checked: pure tensor
functions, no megatron-core. The multi-rank runs of the same layout are in test_megatron_layout.py."""

from __future__ import annotations

import pytest
import torch

from engine.backends.megatron.layout import left_align, micro_batches, seq_multiple
from engine.runtime.batch import pack_groups


def test_seq_multiple_hand_checked():
    assert seq_multiple(1, False) == 1
    assert seq_multiple(4, False) == 1  # no SP: the sequence is not split
    assert [seq_multiple(t, True) for t in (2, 4, 8)] == [2, 4, 8]
    assert seq_multiple(1, False, "tensorwise") == 16
    assert seq_multiple(8, True, "delayed") == 128  # s/8 tokens per rank, each rank's count % 16
    assert seq_multiple(2, True, "blockwise") == 256
    assert seq_multiple(1, False, "blockwise") == 128


def test_left_align_puts_real_tokens_first_in_order():
    # prompts [5 6 7] and [9]; responses [20 21] and [22 23 24]: runtime layout (left-padded prompts)
    b = pack_groups([[5, 6, 7], [9]], [[20, 21], [22, 23, 24]], 1, pad_id=0)
    assert b["input_ids"].tolist() == [[5, 6, 7, 20, 21, 0], [0, 0, 9, 22, 23, 24]]
    flat = {k: v for k, v in b.items() if k not in ("prompt_ids", "prompt_mask")}
    a = left_align(flat, 8)
    assert a["input_ids"].tolist() == [[5, 6, 7, 20, 21, 0, 0, 0], [9, 22, 23, 24, 0, 0, 0, 0]]
    assert a["position_ids"].tolist() == [list(range(8))] * 2
    # the logits at column c predict the token at c + 1
    assert a["logit_index"].tolist() == [[2, 3, 4], [0, 1, 2]]
    assert "attention_mask" not in a
    assert torch.equal(a["responses"], flat["responses"]) and torch.equal(a["response_mask"], flat["response_mask"])
    picked = a["input_ids"].gather(1, a["logit_index"] + 1)
    assert (picked == flat["responses"])[flat["response_mask"].bool()].all()
    with pytest.raises(ValueError, match="more than the width"):
        left_align(flat, 3)


def _random_batch(seed: int, rows: int):
    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(1, 50, (int(torch.randint(1, 12, (1,), generator=g)),), generator=g).tolist()
               for _ in range(rows)]
    responses = [torch.randint(1, 50, (int(torch.randint(0, 9, (1,), generator=g)),), generator=g).tolist()
                 for _ in range(rows)]
    b = pack_groups(prompts, responses, 1, pad_id=0)
    return {k: v for k, v in b.items() if k not in ("prompt_ids", "prompt_mask")}, prompts, responses


@pytest.mark.parametrize("tp", [2, 4, 8])
@pytest.mark.parametrize("fp8", ["none", "tensorwise", "blockwise"])
def test_every_micro_batch_under_sp_is_a_multiple_of_tp_and_the_fp8_granule(tp, fp8):
    m = seq_multiple(tp, True, fp8)
    assert m % tp == 0 and (fp8 == "none" or m % (128 if fp8 == "blockwise" else 16) == 0)
    for seed in range(20):
        flat, prompts, responses = _random_batch(seed, rows=7)
        longest = max(len(p) + len(r) for p, r in zip(prompts, responses))
        micro = micro_batches(flat, 3, m)
        assert [mb["input_ids"].shape[0] for mb in micro] == [3, 3, 1]
        widths = {mb["input_ids"].shape[1] for mb in micro}
        assert len(widths) == 1  # one shape per forward-backward call (pipeline parallel)
        (w,) = widths
        assert w % tp == 0 and w % m == 0 and longest <= w < longest + m
        rows = [r for mb in micro for r in mb["input_ids"].tolist()]
        for row, p, r in zip(rows, prompts, responses):
            assert row[:len(p) + len(r)] == p + r


def test_odd_lengths_are_what_the_padding_is_for():
    flat, prompts, responses = _random_batch(3, rows=5)
    odd = micro_batches(flat, 5, 1)[0]["input_ids"].shape[1]
    assert odd == max(len(p) + len(r) for p, r in zip(prompts, responses))
    assert micro_batches(flat, 5, 2)[0]["input_ids"].shape[1] == odd + odd % 2


@pytest.mark.parametrize("with_entropy", [True, False])
@pytest.mark.parametrize("chunk", [1, 2, 7])
def test_chunked_log_probs_and_written_out_backward_equal_autograd(with_entropy, chunk):
    """One rank (no TP): the chunked pass over a left-aligned [B, S, V] with a column index (two tokens
    read from one column, so the backward must add), 2 padding ids and temperature 0.7, against
    log_softmax and autograd on the real 10 ids."""
    from engine.backends.megatron.logprobs import vocab_parallel_log_probs

    g = torch.Generator().manual_seed(0)
    b, s, t, v, real = 3, 9, 5, 12, 10
    x = (torch.randn(b, s, v, generator=g) * 3).requires_grad_(True)
    idx = torch.randint(0, s, (b, t), generator=g)
    idx[0, 3] = idx[0, 4]
    tok = torch.randint(0, real, (b, t), generator=g)
    g1, g2 = torch.randn(b, t, generator=g), torch.randn(b, t, generator=g)
    lp, ent = vocab_parallel_log_probs(x, tok, 0, real, 0.7, with_entropy, index=idx, chunk=chunk)
    ((lp * g1).sum() + ((ent * g2).sum() if with_entropy else 0)).backward()
    got = x.grad.clone()
    x.grad = None
    logp = torch.log_softmax(x[torch.arange(b)[:, None], idx][..., :real] / 0.7, dim=-1)
    want_lp = logp.gather(-1, tok[..., None]).squeeze(-1)
    want_ent = -(logp.exp() * logp).sum(-1)
    ((want_lp * g1).sum() + ((want_ent * g2).sum() if with_entropy else 0)).backward()
    assert (lp - want_lp).abs().max() < 1e-5
    assert ent is None or (ent - want_ent).abs().max() < 1e-5
    assert (got - x.grad).abs().max() < 1e-5
    assert torch.count_nonzero(got[..., real:]) == 0  # padding ids get no gradient
