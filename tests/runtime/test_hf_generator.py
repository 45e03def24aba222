"""The hf generator on a real tiny Qwen2: KV-cache decode, left padding, stops, seeds."""

import torch

from engine.backends.base import SamplingParams
from engine.backends.hf_generator import HFGenerator, end_token_ids, sample_next


def _prompts(tok, texts):
    return [tok(t, add_special_tokens=False)["input_ids"] for t in texts]


def _greedy_no_cache(model, ids, steps):
    ids = list(ids)
    out = []
    for _ in range(steps):
        with torch.no_grad():
            nxt = int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax())
        out.append(nxt)
        ids.append(nxt)
    return out


def test_greedy_cached_decode_matches_full_recompute_with_left_padding(tiny_model, tokenizer):
    gen = HFGenerator(tiny_model, tokenizer)
    prompts = _prompts(tokenizer, ["Compute 3+4.", "Question:\nCompute 12+5.\nAnswer:\n"])  # different lengths
    params = SamplingParams(max_new_tokens=6, temperature=0.0, end_token_ids=())
    out = gen.generate(prompts, 1, params, seed=0)
    for p, r in zip(prompts, out.response_ids):
        assert r == _greedy_no_cache(tiny_model, p, 6)
    assert out.finish_reasons == ["length", "length"]


def test_sequences_still_running_after_others_stop_match_full_recompute(tiny_model, tokenizer):
    """Greedy, with an end token that stops some sequences early: they leave the batch and its KV
    cache, and every other sequence still decodes exactly what a full recompute gives."""
    gen = HFGenerator(tiny_model, tokenizer)
    prompts = _prompts(tokenizer, ["Compute 3+4.", "Question:\nCompute 12+5.\nAnswer:\n", "Q", "Compute 9*9."])
    free = [_greedy_no_cache(tiny_model, p, 8) for p in prompts]
    firsts = [f[1] for f in free]
    end = max(set(firsts), key=firsts.count)  # the second token of at least one sequence
    out = gen.generate(prompts, 1, SamplingParams(max_new_tokens=8, temperature=0.0, end_token_ids=(end,)), seed=0)
    stopped = 0
    for f, r, why in zip(free, out.response_ids, out.finish_reasons):
        cut = f.index(end) + 1 if end in f else len(f)
        assert r == f[:cut] and (why == "stop") == (end in f)
        stopped += cut < len(f)
    assert 1 <= stopped < len(prompts)


def test_same_seed_same_samples_and_prompt_major_order(tiny_model, tokenizer):
    gen = HFGenerator(tiny_model, tokenizer)
    prompts = _prompts(tokenizer, ["Compute 1+1.", "Compute 2*3."])
    params = SamplingParams(max_new_tokens=8, temperature=1.0)
    a = gen.generate(prompts, 3, params, seed=7)
    b = gen.generate(prompts, 3, params, seed=7)
    c = gen.generate(prompts, 3, params, seed=8)
    assert a.response_ids == b.response_ids
    assert a.response_ids != c.response_ids
    assert len(a.response_ids) == 6


def test_end_token_stops_each_sequence_on_its_own(tiny_model, tokenizer):
    gen = HFGenerator(tiny_model, tokenizer)
    prompts = _prompts(tokenizer, ["Compute 1+1.", "Compute 5+5."])
    free = gen.generate(prompts, 4, SamplingParams(max_new_tokens=10, temperature=1.0), seed=1)
    # make the 3rd token of the first sample an end token: that sample (only) stops there
    end = free.response_ids[0][2]
    out = gen.generate(prompts, 4, SamplingParams(max_new_tokens=10, temperature=1.0, end_token_ids=(end,)), seed=1)
    assert out.response_ids[0] == free.response_ids[0][:free.response_ids[0].index(end) + 1]
    assert out.finish_reasons[0] == "stop"
    for ids, why in zip(out.response_ids, out.finish_reasons):
        assert (why == "stop") == (end in ids)
        if end in ids:
            assert ids.index(end) == len(ids) - 1


def test_stop_string(tiny_model, tokenizer):
    gen = HFGenerator(tiny_model, tokenizer)
    prompts = _prompts(tokenizer, ["Compute 1+1."])
    free = gen.generate(prompts, 1, SamplingParams(max_new_tokens=10, temperature=1.0), seed=3)
    ids, special = free.response_ids[0], set(tokenizer.all_special_ids)
    # two sampled tokens that are text (a special token is left out of the decoded text)
    i = next(i for i in range(1, len(ids) - 1) if ids[i] not in special and ids[i + 1] not in special)
    stop = tokenizer.decode(ids[i:i + 2])
    out = gen.generate(prompts, 1, SamplingParams(max_new_tokens=10, temperature=1.0, stop=(stop,)), seed=3)
    assert out.finish_reasons == ["stop"]
    assert stop in out.texts[0] and len(out.response_ids[0]) <= i + 2


def test_end_tokens_come_from_the_tokenizer(tokenizer):
    ids = end_token_ids(tokenizer)
    assert tokenizer.eos_token_id in ids
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in ids
    assert tokenizer.pad_token_id not in ids


def test_top_p_and_top_k_keep_the_best_token():
    logits = torch.tensor([[0.0, 5.0, 1.0, 2.0]])
    g = torch.Generator().manual_seed(0)
    for params in (SamplingParams(4, top_p=0.01), SamplingParams(4, top_k=1)):
        draws = {int(sample_next(logits, params, g)) for _ in range(20)}
        assert draws == {1}
    assert int(sample_next(logits, SamplingParams(4, temperature=0.0), g)) == 1


def test_finished_sequences_leaving_the_batch_change_no_sample(tiny_model, tokenizer):
    """Each sequence's tokens depend on its own draws only: with an end token that stops some samples
    early (they leave the batch), every other sample is the same as without it, token for token."""
    gen = HFGenerator(tiny_model, tokenizer)
    prompts = _prompts(tokenizer, ["Compute 1+1.", "Compute 5+5.", "Compute 7*3."])
    free = gen.generate(prompts, 4, SamplingParams(max_new_tokens=12, temperature=1.0), seed=5)
    end = free.response_ids[1][1]  # the second token of one sample ends every sample that draws it
    out = gen.generate(prompts, 4, SamplingParams(max_new_tokens=12, temperature=1.0, end_token_ids=(end,)), seed=5)
    early = 0
    for a, b in zip(free.response_ids, out.response_ids):
        cut = a.index(end) + 1 if end in a else len(a)
        assert b == a[:cut]
        early += cut < len(a)
    assert early >= 1


def test_shared_prompt_cache_gives_the_same_greedy_samples(tiny_model, tokenizer):
    gen = HFGenerator(tiny_model, tokenizer)
    prompts = _prompts(tokenizer, ["Compute 3+4.", "Question:\nCompute 12+5.\nAnswer:\n"])
    params = SamplingParams(max_new_tokens=5, temperature=0.0)
    one = gen.generate(prompts, 1, params, seed=0).response_ids
    three = gen.generate(prompts, 3, params, seed=0).response_ids
    assert three == [one[0]] * 3 + [one[1]] * 3


def test_preallocated_kv_cache_samples_what_transformers_cache_samples(tiny_model, tokenizer, monkeypatch):
    """The decode loop's in-place KV buffers (`engine.modeling.preallocated_cache`) give the tokens and
    log-probs transformers' own growing cache gives, at temperature 1 with rows leaving the batch."""
    import engine.backends.hf_generator as hg

    gen = HFGenerator(tiny_model, tokenizer)
    prompts = _prompts(tokenizer, ["Compute 1+1.", "Question:\nCompute 12+5.\nAnswer:\n", "Q"])
    monkeypatch.setattr(hg, "lean_decoder", lambda model: None)  # transformers' forward, as for other models
    params = SamplingParams(max_new_tokens=10, temperature=1.0, logprobs=True)
    free = gen.generate(prompts, 3, params, seed=3)
    end = free.response_ids[0][1]
    params = SamplingParams(max_new_tokens=10, temperature=1.0, logprobs=True, end_token_ids=(end,))
    ours = gen.generate(prompts, 3, params, seed=3)
    monkeypatch.setattr(hg, "preallocated_cache", lambda model, capacity: None)  # the model's own cache
    theirs = gen.generate(prompts, 3, params, seed=3)
    assert ours.response_ids == theirs.response_ids and ours.finish_reasons == theirs.finish_reasons
    assert ours.log_probs == theirs.log_probs
    assert "stop" in ours.finish_reasons


def test_lean_decoder_samples_what_transformers_forward_samples(tiny_model, tokenizer, monkeypatch):
    """The decode loop on `engine.decoder.LeanDecoder` (the default for qwen2/llama/mistral in float32)
    gives the tokens, finish reasons and log-probs of the module's own forward, with rows leaving the batch
    (log-probs to float32 rounding: its shared-prompt attention sums in another order)."""
    import engine.backends.hf_generator as hg
    from engine.decoder import LeanDecoder

    gen = HFGenerator(tiny_model, tokenizer)
    assert isinstance(hg.decoder_for(tiny_model, "cache"), LeanDecoder)
    prompts = _prompts(tokenizer, ["Compute 1+1.", "Question:\nCompute 12+5.\nAnswer:\n", "Q"])
    free = gen.generate(prompts, 4, SamplingParams(max_new_tokens=12, temperature=1.0), seed=5)
    end = free.response_ids[0][2]
    params = SamplingParams(max_new_tokens=12, temperature=1.0, logprobs=True, end_token_ids=(end,))
    ours = gen.generate(prompts, 4, params, seed=5)
    monkeypatch.setattr(hg, "lean_decoder", lambda model: None)
    assert isinstance(hg.decoder_for(tiny_model, "cache"), hg.HFDecoder)
    theirs = gen.generate(prompts, 4, params, seed=5)
    assert ours.response_ids == theirs.response_ids and ours.finish_reasons == theirs.finish_reasons
    torch.testing.assert_close(ours.log_probs, theirs.log_probs, rtol=1e-5, atol=1e-5)
    assert "stop" in ours.finish_reasons and "length" in ours.finish_reasons


def test_preallocated_kv_cache_grows_past_its_capacity(tiny_model):
    """A cache sized below what is decoded doubles its buffers and still holds every position."""
    from engine.modeling import cache_kwarg, preallocated_cache

    kw = cache_kwarg(tiny_model)
    ids = torch.tensor([[5, 9, 13, 17, 21, 25, 29, 33, 37]])
    with torch.no_grad():
        full = tiny_model(input_ids=ids).logits[0, -1]
        cache = preallocated_cache(tiny_model, capacity=2)
        assert cache is not None
        out = tiny_model(input_ids=ids[:, :3], use_cache=True, **{kw: cache})
        for i in range(3, ids.shape[1]):
            out = tiny_model(input_ids=ids[:, i:i + 1], use_cache=True, **{kw: getattr(out, kw)})
    assert getattr(out, kw) is cache and cache.get_seq_length() == ids.shape[1]
    torch.testing.assert_close(out.logits[0, -1], full, rtol=1e-5, atol=1e-5)


def test_sliding_window_models_keep_their_own_cache(tiny_model):
    from engine.modeling import preallocated_cache

    cfg = tiny_model.config
    old = getattr(cfg, "layer_types", None)
    cfg.layer_types = ["sliding_attention"] + ["full_attention"] * (cfg.num_hidden_layers - 1)
    try:
        assert preallocated_cache(tiny_model, 16) is None
    finally:
        cfg.layer_types = old
