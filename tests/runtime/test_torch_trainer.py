"""The torch trainer on a real tiny Qwen2: exact gradient accumulation, a learning update, state."""

import copy

import torch

from engine.backends.torch_trainer import BatchConfig, LossConfig, OptimConfig, TorchTrainer
from engine.runtime.batch import pack


def _batch(tok, model):
    prompts = [tok(t, add_special_tokens=False)["input_ids"] for t in ["Compute 1+2.", "Compute 3*3.", "Q", "Compute 9+9."]]
    responses = [[5, 6, 7], [8], [9, 10, 11, 12], [13, 14]]
    b = pack(prompts, responses, tok.pad_token_id)
    b["advantages"] = torch.tensor([1.0, -1.0, 0.5, -0.5])[:, None] * b["response_mask"]
    return b


def _trainer(model, micro, agg="token_mean", kl=0.0, ent=0.0):
    return TorchTrainer(model, OptimConfig(lr=1e-2), LossConfig(loss_agg=agg, kl_coef=kl, entropy_coef=ent,
                                                                max_response_length=4),
                        BatchConfig(mini_batch=4, micro_batch=micro, log_prob_micro_batch=3))


def test_pack_layout(tokenizer):
    b = pack([[1, 2, 3], [4]], [[7], [8, 9]], pad_id=0)
    assert b["input_ids"].tolist() == [[1, 2, 3, 7, 0], [0, 0, 4, 8, 9]]
    assert b["responses"].tolist() == [[7, 0], [8, 9]]
    assert b["response_mask"].tolist() == [[1.0, 0.0], [1.0, 1.0]]
    assert b["position_ids"][1].tolist()[2:] == [0, 1, 2]


def test_micro_batches_accumulate_to_the_full_batch_gradient(tiny_model, tokenizer):
    for agg in ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum", "seq_mean_token_sum_norm",
                "micro_batch_token_mean"):
        grads = []
        for micro in (4, 1):
            model = copy.deepcopy(tiny_model)
            tr = _trainer(model, micro, agg, kl=0.1, ent=0.01)
            batch = _batch(tokenizer, model)
            batch["old_log_probs"] = tr.compute_log_probs(batch)
            batch["ref_log_probs"] = batch["old_log_probs"] - 0.1
            for group in tr.opt.param_groups:  # keep weights: compare the accumulated gradients
                group["lr"] = 0.0
            tr.update(batch)
            grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
        assert torch.allclose(grads[0], grads[1], atol=1e-6, rtol=1e-4), agg


def test_logged_metrics_do_not_depend_on_the_micro_batch_size(tiny_model, tokenizer):
    # responses of 3, 1, 4 and 2 tokens: a mean of micro-batch means would weight them unequally
    results = []
    for micro in (4, 1):
        model = copy.deepcopy(tiny_model)
        tr = _trainer(model, micro, kl=0.1, ent=0.01)
        batch = _batch(tokenizer, model)
        batch["old_log_probs"] = tr.compute_log_probs(batch) + 0.3 * batch["response_mask"]  # ratios off 1: clipping
        batch["ref_log_probs"] = batch["old_log_probs"] - 0.1
        results.append(tr.update(batch))
    keys = ("trainer/pg_loss", "trainer/entropy", "trainer/kl", "trainer/pg_clipfrac", "trainer/ppo_kl", "trainer/grad_norm")
    for key in keys:
        assert abs(results[0][key] - results[1][key]) < 1e-5 * max(1.0, abs(results[0][key])), key
    assert 0 < results[0]["trainer/pg_clipfrac"] < 1
    assert results[0]["trainer/skipped_steps"] == 0.0


def test_non_finite_gradient_skips_the_optimizer_step(tiny_model, tokenizer):
    tr = _trainer(copy.deepcopy(tiny_model), 4)
    batch = _batch(tokenizer, tr.model)
    batch["advantages"] = batch["advantages"] * float("nan")
    before = [p.detach().clone() for p in tr.model.parameters()]
    metrics = tr.update(batch)
    assert metrics["trainer/skipped_steps"] == 1.0 and "trainer/grad_norm" not in metrics
    assert all(torch.equal(p, q) for p, q in zip(before, tr.model.parameters()))


def test_log_probs_in_micro_batches_match_one_pass(tiny_model, tokenizer):
    tr = _trainer(tiny_model, 4)
    batch = _batch(tokenizer, tiny_model)
    whole = TorchTrainer(tiny_model, OptimConfig(), LossConfig(), BatchConfig(4, 4, 4)).compute_log_probs(batch)
    assert torch.allclose(tr.compute_log_probs(batch) * batch["response_mask"], whole * batch["response_mask"], atol=1e-5)


def test_update_raises_log_prob_of_positive_advantage(tiny_model, tokenizer):
    tr = _trainer(tiny_model, 2)
    batch = _batch(tokenizer, tiny_model)
    before = tr.compute_log_probs(batch)
    batch["old_log_probs"] = before
    metrics = tr.update(batch)
    after = tr.compute_log_probs(batch)
    m = batch["response_mask"]
    assert ((after - before) * m)[0].sum() > 0  # advantage +1
    assert ((after - before) * m)[1].sum() < 0  # advantage -1
    assert {"trainer/pg_loss", "trainer/entropy", "trainer/grad_norm", "trainer/pg_clipfrac"} <= metrics.keys()


def test_state_dict_round_trip(tiny_model, tokenizer):
    tr = _trainer(copy.deepcopy(tiny_model), 4)
    batch = _batch(tokenizer, tr.model)
    batch["old_log_probs"] = tr.compute_log_probs(batch)
    tr.update(batch)
    other = _trainer(copy.deepcopy(tiny_model), 4)
    other.load_state_dict(copy.deepcopy(tr.state_dict()))
    tr.update(batch)
    other.update(batch)
    for p, q in zip(tr.model.parameters(), other.model.parameters()):
        assert torch.equal(p, q)


def test_grouped_prompt_pass_equals_flat_pass_in_value_and_gradient(tiny_model, tokenizer):
    from engine.backends.torch_trainer import response_logits, split_rows
    from engine.runtime.batch import pack_groups

    prompts = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in ["Compute 1+2.", "Q"]]
    responses = [[5, 6, 7], [8], [9, 10, 11, 12], [13, 14], [15], [16, 17]]
    grouped = pack_groups(prompts, responses, 3, tokenizer.pad_token_id)
    flat = {k: v for k, v in grouped.items() if not k.startswith("prompt_")}
    m = grouped["response_mask"].bool()
    grads = []
    for batch in (flat, grouped):
        tiny_model.zero_grad()
        logits = response_logits(tiny_model, batch)
        (logits.log_softmax(-1)[m].sum()).backward()
        grads.append((logits.detach(), torch.cat([p.grad.flatten() for p in tiny_model.parameters()])))
    assert torch.allclose(grads[0][0][m], grads[1][0][m], atol=1e-5)
    assert torch.allclose(grads[0][1], grads[1][1], atol=1e-5, rtol=1e-4)
    # chunks that are whole groups keep the per-prompt tensors, others fall back to flat
    assert [c["prompt_ids"].shape[0] for c in split_rows(grouped, 3)] == [1, 1]
    assert all("prompt_ids" not in c for c in split_rows(grouped, 2))


def test_log_probs_and_entropy_at_the_rollout_temperature(tiny_model, tokenizer):
    from engine.algorithm.losses import entropy_from_logits
    from engine.backends.torch_trainer import response_logits

    tr = TorchTrainer(tiny_model, OptimConfig(lr=1e-2), LossConfig(temperature=0.7),
                      BatchConfig(mini_batch=4, micro_batch=2, log_prob_micro_batch=3))
    batch = _batch(tokenizer, tiny_model)
    lp, ent = tr.compute_log_probs(batch, with_entropy=True)
    with torch.no_grad():
        z = response_logits(tiny_model, batch) / 0.7
    want = torch.log_softmax(z, -1).gather(-1, batch["responses"][..., None]).squeeze(-1)
    m = batch["response_mask"].bool()
    assert (lp - want)[m].abs().max() < 1e-5
    assert (ent - entropy_from_logits(z))[m].abs().max() < 1e-5
    plain = TorchTrainer(copy.deepcopy(tiny_model), OptimConfig(), LossConfig(),
                         BatchConfig(mini_batch=4, micro_batch=2, log_prob_micro_batch=3)).compute_log_probs(batch)
    assert (plain - lp)[m].abs().max() > 1e-3  # the temperature is not a no-op


def test_on_policy_update_reports_the_generator_gap(tiny_model, tokenizer):
    # no old log-probs: the update's own forward pass is the old policy; it measures the rollout's gap
    tr = TorchTrainer(tiny_model, OptimConfig(lr=1e-2), LossConfig(temperature=0.7, rollout_correction="tis", kl_coef=0.0),
                      BatchConfig(mini_batch=4, micro_batch=1, log_prob_micro_batch=3))
    batch = _batch(tokenizer, tiny_model)
    mask = batch["response_mask"]
    batch["rollout_log_probs"] = tr.compute_log_probs(batch) + 0.1 * mask  # the generator 0.1 nats more confident
    got = tr.update(batch)
    assert abs(got["rollout/token_mult_prob_error"] - torch.exp(torch.tensor(0.1)).item()) < 1e-4
    assert abs(got["rollout/kl"] - 0.1) < 1e-4 and abs(got["rollout/max_abs_diff"] - 0.1) < 1e-4
    assert got["trainer/ppo_kl"] == 0.0 and got["trainer/pg_clipfrac"] == 0.0  # ratio 1


def test_length_parts_cut_where_the_padding_saved_beats_the_cost():
    from engine.backends.torch_trainer import length_parts

    # one part pads 10 units to 20 tokens: 200; cut after the two 20s: 2 x 20 + 8 x 8 + 30 = 134
    assert length_parts([20, 20, 8, 8, 8, 8, 8, 8, 8, 8], 30.0) == [0, 2]
    assert length_parts([20, 20, 8, 8, 8, 8, 8, 8, 8, 8], 100.0) == [0]  # 2 x 20 + 64 + 100 > 200
    assert length_parts([32, 10, 10, 10, 10, 10, 10, 10], 0.0) == [0, 1]
    assert length_parts([5, 5, 5], 0.0) == [0] and length_parts([], 1.0) == []


def test_length_sorted_micro_batches_give_the_same_log_probs_update_and_metrics(tiny_model, tokenizer):
    """Micro-batches ordered by response length and trimmed to their longest response (the grouped
    layout, each sequence with its own prompt's cache) change the work, not the numbers."""
    import engine.backends.torch_trainer as TT
    from engine.runtime.batch import pack_groups

    prompts = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in ["Compute 1+2.", "Q", "Compute 9*9."]]
    responses = [[5] * 12, [6], [7, 8], [9, 10, 11], [12] * 11, [13], [14, 15], [16], [17] * 10]
    base = pack_groups(prompts, responses, 3, tokenizer.pad_token_id)
    base["advantages"] = torch.linspace(-1, 1, 9)[:, None] * base["response_mask"]
    chunks = TT.micro_batches(base, 9)
    assert [c["responses"].shape for _, c in chunks] == [(3, 12), (6, 3)]  # the long three, then the rest
    assert sorted(torch.cat([rows for rows, _ in chunks]).tolist()) == list(range(9))
    for rows, c in chunks:
        assert torch.equal(c["prompt_ids"][c["prompt_index"]], base["prompt_ids"][rows // 3])
    assert [c["responses"].shape[0] for _, c in TT.micro_batches(base, 2)] == [2, 1, 2, 2, 2]  # at most 2 each

    def run(split):
        saved = TT.micro_batches
        if not split:  # one chunk in batch order, untrimmed: the arithmetic before the split
            TT.micro_batches = lambda b, size: [(torch.arange(b["responses"].shape[0]), dict(b))]
        try:
            model = copy.deepcopy(tiny_model)
            tr = TorchTrainer(model, OptimConfig(lr=1e-2), LossConfig(kl_coef=0.1, entropy_coef=0.01),
                              BatchConfig(mini_batch=9, micro_batch=9, log_prob_micro_batch=9))
            batch = dict(base)
            lp = tr.compute_log_probs(batch)
            batch["old_log_probs"] = lp + 0.2 * batch["response_mask"]  # ratios off 1: clipping
            batch["ref_log_probs"] = lp - 0.1
            for group in tr.opt.param_groups:  # keep weights: compare the accumulated gradients
                group["lr"] = 0.0
            metrics = tr.update(batch)
            return lp, metrics, torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        finally:
            TT.micro_batches = saved

    (lp0, m0, w0), (lp1, m1, w1) = run(False), run(True)
    mask = base["response_mask"].bool()
    assert torch.allclose(lp0[mask], lp1[mask], atol=1e-5)
    short = chunks[1][0]
    assert torch.all(lp1[short, 3:] == 0)  # the short sequences' padding past 3 tokens is not computed
    for key in ("trainer/pg_loss", "trainer/entropy", "trainer/kl", "trainer/pg_clipfrac", "trainer/ppo_kl",
                "trainer/grad_norm"):
        assert abs(m0[key] - m1[key]) < 1e-5 * max(1.0, abs(m0[key])), key
    assert torch.allclose(w0, w1, atol=1e-6, rtol=1e-4)
