"""The lean decoder (`engine.decoder`) against transformers' own forward, on real tiny models of the
three families: same logits through prefill and decode with left padding and GQA, weight changes
seen, and the models it does not cover handed back to transformers."""

import pytest
import torch

from engine.decoder import SHARED_MIN_LIVE, SharedPrefixCache, lean_decoder
from engine.modeling import _preallocated_layer_class, cache_kwarg, random_model


def _model(tokenizer, family: str, **kw):
    from schemas import Architecture

    arch = dict(family=family, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, ffn_hidden_size=64,
                vocab_size=126, tied_embeddings=family == "qwen2", max_position_embeddings=128,
                qkv_bias=family == "qwen2")
    arch.update(kw)
    return random_model(Architecture(**arch), tokenizer, seed=1).eval()


def _left_padded(b: int, p: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 126, (b, p), generator=g)
    mask = torch.ones(b, p, dtype=torch.long)
    for i in range(b):
        mask[i, :i % 4] = 0  # rows padded by 0..3 tokens on the left
    ids = ids.masked_fill(mask == 0, 0)
    return ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)


@pytest.mark.parametrize("family,extra", [
    ("qwen2", {}),
    ("llama", {}),
    ("llama", {"rope_scaling": {"type": "llama3", "factor": 8.0, "original_max_position_embeddings": 64,
                                "low_freq_factor": 1.0, "high_freq_factor": 4.0}}),
    ("mistral", {}),
])
def test_prefill_and_decode_logits_match_transformers(tokenizer, family, extra):
    """Left-padded prompts, then eight one-token steps on a shared cache, with rows leaving the batch
    half-way: the lean forward gives transformers' logits at every step."""
    model = _model(tokenizer, family, **extra)
    dec = lean_decoder(model)
    assert dec is not None
    kw = cache_kwarg(model)
    ids, mask, pos = _left_padded(6, 9)
    with torch.no_grad():
        res = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1)
        theirs_cache = getattr(res, kw)
        ours, cache = dec.prefill(ids, mask, pos, capacity=12)  # grows past its capacity below
        torch.testing.assert_close(ours, res.logits[:, -1], rtol=1e-5, atol=1e-5)
        tok, nxt = res.logits[:, -1].argmax(-1), pos[:, -1:] + 1
        for step in range(8):
            if step == 4:  # two rows finish: both caches keep the others
                keep = torch.tensor([0, 2, 3, 5])
                theirs_cache.batch_select_indices(keep)
                cache.batch_select_indices(keep)
                tok, nxt, mask = tok[keep], nxt[keep], mask[keep]
            mask = torch.cat([mask, torch.ones(len(tok), 1, dtype=mask.dtype)], dim=1)
            res = model(input_ids=tok[:, None], attention_mask=mask, position_ids=nxt, use_cache=True,
                        **{kw: theirs_cache})
            theirs_cache = getattr(res, kw)
            ours = dec.step(tok, mask, nxt, cache)
            torch.testing.assert_close(ours, res.logits[:, -1], rtol=1e-5, atol=1e-5)
            tok, nxt = res.logits[:, -1].argmax(-1), nxt + 1
    assert cache.get_seq_length() == 9 + 8


@pytest.mark.parametrize("family", ["qwen2", "llama", "mistral"])
def test_shared_prompt_cache_gives_the_logits_of_a_repeated_cache(tokenizer, family):
    """n samples per prompt on `SharedPrefixCache` (each prompt's keys and values held once) give
    transformers' logits on the prompt cache repeated n times, at every step: rows diverging, rows
    leaving (first while the shared layout stays, then below `SHARED_MIN_LIVE`, where it goes flat) and
    responses outgrowing the buffers' capacity."""
    model = _model(tokenizer, family)  # GQA: 4 query heads over 2 key/value heads
    dec, kw = lean_decoder(model), cache_kwarg(model)
    g, n, p = 3, 4, 7
    ids, mask, pos = _left_padded(g, p)
    feed = torch.Generator().manual_seed(1)
    with torch.no_grad():
        res = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1)
        theirs_cache = getattr(res, kw)
        theirs_cache.batch_repeat_interleave(n)
        ours, cache = dec.prefill(ids, mask, pos, capacity=p + 3, n=n)  # room for 3 response tokens
        assert isinstance(cache, SharedPrefixCache)
        torch.testing.assert_close(ours, res.logits[:, -1], rtol=1e-5, atol=1e-5)
        mask, nxt = mask.repeat_interleave(n, 0), pos[:, -1:].repeat_interleave(n, 0) + 1
        leave = {4: torch.tensor([0, 3, 5, 6, 9, 11]), 7: torch.tensor([1, 4])}  # 6 of 12 live, then 2
        for step in range(10):
            if step in leave:
                keep = leave[step]
                theirs_cache.batch_select_indices(keep)
                cache.batch_select_indices(keep)
                mask, nxt = mask[keep], nxt[keep]
            assert (cache.flat is not None) == (len(nxt) < SHARED_MIN_LIVE * g * n)
            tok = torch.randint(3, 126, (len(nxt),), generator=feed)  # every row its own tokens
            mask = torch.cat([mask, torch.ones(len(tok), 1, dtype=mask.dtype)], dim=1)
            res = model(input_ids=tok[:, None], attention_mask=mask, position_ids=nxt, use_cache=True,
                        **{kw: theirs_cache})
            theirs_cache = getattr(res, kw)
            torch.testing.assert_close(dec.step(tok, mask, nxt, cache), res.logits[:, -1], rtol=1e-5, atol=1e-5)
            nxt = nxt + 1
    assert cache.flat is not None and cache.get_seq_length() == p + 10


def test_quickstart_shaped_model_is_bit_identical(tiny_model):
    """On the quickstart's family and settings (qwen2, tied embeddings, qkv bias, GQA) the lean
    prefill computes exactly transformers' numbers, so swapping it in changes no sample."""
    ids, mask, pos = _left_padded(5, 7, seed=3)
    with torch.no_grad():
        theirs = tiny_model(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=1).logits[:, -1]
        ours, _ = lean_decoder(tiny_model).prefill(ids, mask, pos, capacity=8)
    assert torch.equal(ours, theirs)


def test_weight_changes_are_seen(tiny_model):
    """The fused q/k/v and gate/up weights are cached between no-grad calls; an in-place change of a
    parameter (a weight sync, an optimizer step) invalidates them."""
    dec = lean_decoder(tiny_model)
    ids, mask, pos = _left_padded(2, 5)
    with torch.no_grad():
        before, _ = dec.prefill(ids, mask, pos, capacity=8)
        tiny_model.model.layers[0].mlp.up_proj.weight.mul_(2.0)
        tiny_model.model.layers[1].self_attn.k_proj.bias.add_(0.5)
        after, _ = dec.prefill(ids, mask, pos, capacity=8)
        theirs = tiny_model(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=1).logits[:, -1]
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, theirs, rtol=1e-5, atol=1e-5)


def test_models_outside_its_cover_use_transformers(tokenizer, tiny_model):
    assert lean_decoder(_model(tokenizer, "mistral", sliding_window=4)) is None
    assert lean_decoder(_model(tokenizer, "qwen2").to(torch.bfloat16)) is None
    dropout = _model(tokenizer, "llama")
    dropout.config.attention_dropout = 0.1
    assert lean_decoder(dropout) is None
    ckpt = _model(tokenizer, "qwen2")
    ckpt.gradient_checkpointing_enable()
    assert lean_decoder(ckpt) is None
    assert lean_decoder(tiny_model) is lean_decoder(tiny_model)  # built once per module


def test_kv_buffers_select_rows_keeps_the_filled_positions():
    """The preallocated cache layer (used by both decoders) keeps the chosen rows' filled positions and
    its capacity when finished rows leave."""
    buf = _preallocated_layer_class()(capacity=6)
    k = torch.arange(3 * 1 * 4 * 2, dtype=torch.float32).view(3, 1, 4, 2)
    buf.update(k, -k)
    buf.batch_select_indices(torch.tensor([2, 0]))
    keys, values = buf.update(torch.zeros(2, 1, 1, 2), torch.zeros(2, 1, 1, 2))
    assert keys.shape == (2, 1, 5, 2) and buf._k.shape[2] == 6
    assert torch.equal(keys[:, :, :4], k[[2, 0]]) and torch.equal(values[:, :, :4], -k[[2, 0]])
