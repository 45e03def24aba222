"""Our maths against verl's formulas (verl/trainer/ppo/core_algos.py and its dp_actor), restated here
from reading them: GRPO / Dr.GRPO advantages, PPO-clip with clip-higher and the +-20 log-ratio clamp,
low_var_kl, entropy and log-probs at a temperature, TIS, every aggregation mode, and the gradient of
the whole loss, on random batches with masks, groups of 8, all-equal groups and length-1 responses.

Documented differences, checked as such: verl's vanilla loss adds a dual clip (loss <= 3|A| for A < 0),
which we leave out (the batches here keep ratios below e < 3, where it never binds); verl's
``seq-mean-token-sum-norm`` divides a micro-batch's token sums by L alone and the actor then scales by
micro / mini-batch size, which is Dr.GRPO's ``sum / (B * L)`` at a per-GPU micro-batch of 1; ours is
``sum / (B * L)`` at any micro-batch size.
"""

from __future__ import annotations

import pytest
import torch

from engine.algorithm.advantages import broadcast_to_tokens, group_advantages
from engine.algorithm.losses import aggregate, entropy_from_logits, policy_loss_per_token, token_log_probs
from engine.backends.config import LossConfig

N, G, T, V = 8, 4, 6, 11  # group size, prompts, max_response_length (= the padded width), vocabulary


# --- verl, restated -------------------------------------------------------------------------------
def verl_masked_mean(x, mask):
    return (x * mask).sum() / mask.sum()


def verl_grpo_advantage(scores, index, eps=1e-6, norm_by_std=True):
    """Per prompt id: mean and torch.std (unbiased) of its scores; a single-sample group gets mean 0, std 1."""
    out = scores.clone()
    for gid in set(index):
        rows = [i for i, g in enumerate(index) if g == gid]
        s = scores[rows]
        mean, std = (torch.tensor(0.0), torch.tensor(1.0)) if len(rows) == 1 else (s.mean(), torch.std(s))
        out[rows] = (s - mean) / (std + eps) if norm_by_std else s - mean
    return out


def verl_agg(loss_mat, mask, mode):
    if mode == "token-mean":
        return verl_masked_mean(loss_mat, mask)
    seq = (loss_mat * mask).sum(-1)
    if mode == "seq-mean-token-sum":
        return seq.mean()
    if mode == "seq-mean-token-mean":
        return (seq / mask.sum(-1)).mean()
    if mode == "seq-mean-token-sum-norm":
        return seq.sum() / mask.shape[-1]
    raise ValueError(mode)


def verl_actor_loss(loss_of, rows, micro, mode):
    """The dp_actor's accumulation without dynamic batch size: each micro-batch's aggregated loss
    divided by the gradient-accumulation count (mini / micro), summed."""
    steps = rows // micro
    return sum(loss_of(slice(i, i + micro), mode) / steps for i in range(0, rows, micro))


def verl_policy_terms(logits, tokens, temperature, old, ref, rollout, adv, mask, clip_low, clip_high, tis_cap,
                      kl_coef, ent_coef, mode, micro):
    z = logits / temperature
    logp = torch.log_softmax(z, -1).gather(-1, tokens[..., None]).squeeze(-1)
    probs = torch.softmax(z, -1)
    entropy = torch.logsumexp(z, -1) - (probs * z).sum(-1)
    neg_kl = torch.clamp(logp - old, -20.0, 20.0)
    ratio = torch.exp(neg_kl)
    pg1 = -adv * ratio
    pg2 = -adv * torch.clamp(ratio, 1 - clip_low, 1 + clip_high)
    pg = torch.maximum(pg1, pg2) * torch.exp(old - rollout).clamp(max=tis_cap).detach()
    d = torch.clamp(ref - logp, -20.0, 20.0)
    kld = torch.clamp(torch.exp(d) - d - 1, -10.0, 10.0)

    def loss_of(sl, m):
        mk = mask[sl]
        return verl_agg(pg[sl], mk, m) - ent_coef * verl_agg(entropy[sl], mk, m) + kl_coef * verl_agg(kld[sl], mk, m)

    return verl_actor_loss(loss_of, logits.shape[0], micro, mode), logp, entropy


# --- random batches -------------------------------------------------------------------------------
def _batch(seed: int):
    g = torch.Generator().manual_seed(seed)
    b = N * G
    lengths = torch.randint(1, T + 1, (b,), generator=g)
    lengths[[0, 9, 17]] = 1  # length-1 responses
    lengths[5] = T  # one at the length limit
    mask = (torch.arange(T)[None, :] < lengths[:, None]).float()
    rewards = torch.randint(0, 2, (b,), generator=g).float()
    rewards[N:2 * N] = 1.0  # an all-equal group (all correct)
    rewards[3 * N:] = 0.0  # and one all wrong
    logits = torch.randn(b, T, V, generator=g) * 2
    tokens = torch.randint(0, V, (b, T), generator=g)
    with torch.no_grad():
        cur = torch.log_softmax(logits / 0.7, -1).gather(-1, tokens[..., None]).squeeze(-1)
    # old log-probs off the current ones by less than 1 nat: ratios in (1/e, e), clipping active
    old = cur + (torch.rand(b, T, generator=g) * 1.8 - 0.9)
    ref = cur - torch.rand(b, T, generator=g)
    rollout = old + 0.3 * torch.randn(b, T, generator=g)
    return dict(mask=mask, rewards=rewards, logits=logits, tokens=tokens, old=old * mask, ref=ref * mask,
                rollout=rollout * mask)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("norm_by_std", [True, False])
def test_group_advantages_equal_verl(seed, norm_by_std):
    b = _batch(seed)
    index = [i // N for i in range(N * G)]
    ours = group_advantages(b["rewards"], N, 1e-6, scale_by_std=norm_by_std)
    want = verl_grpo_advantage(b["rewards"], index, 1e-6, norm_by_std)
    assert torch.allclose(ours, want, atol=1e-6)
    assert ours[N:2 * N].abs().max() == 0 and ours[3 * N:].abs().max() == 0  # all-equal groups: no signal


# (our mode, verl's mode, verl's per-GPU micro-batch, scale: ours = verl x scale)
MODES = [
    ("token_mean", "token-mean", N * G, 1.0),                      # one micro-batch: the mini-batch token mean
    ("seq_mean_token_mean", "seq-mean-token-mean", 4, 1.0),        # linear in sequences: any micro-batch
    ("seq_mean_token_sum", "seq-mean-token-sum", 4, 1.0),
    ("seq_mean_token_sum_norm", "seq-mean-token-sum-norm", 1, 1.0),  # Dr.GRPO = verl's at micro-batch 1 ...
    ("seq_mean_token_sum_norm", "seq-mean-token-sum-norm", N * G, 1.0 / (N * G)),  # ... and 1/B of it at one micro-batch
    ("micro_batch_token_mean", "token-mean", 2, 1.0),             # the paper's verl fork: micro-batch 2, token mean
]


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("ours,verls,micro,scale", MODES)
@pytest.mark.parametrize("temperature", [0.6, 1.0, 1.2])
def test_loss_and_gradient_equal_verl(seed, ours, verls, micro, scale, temperature):
    b = _batch(seed)
    mask = b["mask"]
    adv = broadcast_to_tokens(group_advantages(b["rewards"], N), mask)
    cfg = LossConfig(clip_low=0.2, clip_high=0.28, loss_agg=ours, kl_coef=0.1, entropy_coef=0.01,
                     rollout_correction="tis", tis_cap=2.0, temperature=temperature, max_response_length=T)

    x1 = b["logits"].clone().requires_grad_(True)
    logp = token_log_probs(x1, b["tokens"], temperature)
    ent = entropy_from_logits(x1, temperature)
    per_tok, _, _, _ = policy_loss_per_token(logp, b["old"], adv, ent, cfg, b["ref"], b["rollout"])
    loss = aggregate(per_tok, mask, ours, max_response_length=T, micro_batch=2)
    loss.backward()

    x2 = b["logits"].clone().requires_grad_(True)
    want, v_logp, v_ent = verl_policy_terms(x2, b["tokens"], temperature, b["old"], b["ref"], b["rollout"], adv, mask,
                                            0.2, 0.28, 2.0, 0.1, 0.01, verls, micro)
    want.backward()
    m = mask.bool()
    assert torch.allclose(logp[m], v_logp[m], atol=1e-5) and torch.allclose(ent[m], v_ent[m], atol=1e-5)
    assert loss.item() == pytest.approx(want.item() * scale, rel=1e-5, abs=1e-7)
    assert torch.allclose(x1.grad, x2.grad * scale, atol=1e-7, rtol=1e-4)
    assert x1.grad.abs().sum() > 0
