"""Every loss aggregation mode against hand-worked numbers; finite losses at any log-ratio; temperature."""

import math

import pytest
import torch

from engine.algorithm.losses import (LOG_RATIO_CLAMP, aggregate, entropy_from_logits, loss_weights,
                                     policy_loss_per_token, ppo_clip_per_token, token_log_probs)
from engine.backends.config import LossConfig

# four sequences of 3, 1, 2 and 1 real tokens (two length-1 responses), padded to 4
LOSS = torch.tensor([[1.0, 2.0, 3.0, 9.0],
                     [4.0, 9.0, 9.0, 9.0],
                     [5.0, 7.0, 9.0, 9.0],
                     [6.0, 9.0, 9.0, 9.0]])
MASK = torch.tensor([[1.0, 1.0, 1.0, 0.0],
                     [1.0, 0.0, 0.0, 0.0],
                     [1.0, 1.0, 0.0, 0.0],
                     [1.0, 0.0, 0.0, 0.0]])
L = 4  # data.max_response_length


def test_each_mode_hand_worked():
    # token sums per sequence: 6, 4, 12, 6 over 3, 1, 2, 1 tokens (padding's 9s never count)
    assert aggregate(LOSS, MASK, "token_mean").item() == pytest.approx(28 / 7)
    assert aggregate(LOSS, MASK, "seq_mean_token_mean").item() == pytest.approx((2 + 4 + 6 + 6) / 4)
    assert aggregate(LOSS, MASK, "seq_mean_token_sum").item() == pytest.approx(28 / 4)
    # Dr.GRPO: token sums over (sequences x max_response_length), whatever the lengths
    assert aggregate(LOSS, MASK, "seq_mean_token_sum_norm", max_response_length=L).item() == pytest.approx(28 / (4 * 4))
    # the paper's code, loss micro-batches of 2: (6 + 4) / 4 tokens and (12 + 6) / 3 tokens, averaged
    assert aggregate(LOSS, MASK, "micro_batch_token_mean", micro_batch=2).item() == pytest.approx((10 / 4 + 18 / 3) / 2)
    # micro-batches of 1 are seq_mean_token_mean; one micro-batch of all 4 is token_mean
    assert aggregate(LOSS, MASK, "micro_batch_token_mean", micro_batch=1).item() == pytest.approx(18 / 4)
    assert aggregate(LOSS, MASK, "micro_batch_token_mean", micro_batch=4).item() == pytest.approx(28 / 7)


def test_weights_and_whole_number_counts():
    w, c = loss_weights(MASK, "micro_batch_token_mean", micro_batch=2)
    assert c.tolist() == [1.0, 1.0, 1.0, 1.0]
    assert w[0].tolist() == pytest.approx([0.5, 0.5, 0.5, 0.0])  # 2 x 1 / 4 tokens
    assert w[2].tolist() == pytest.approx([2 / 3, 2 / 3, 0.0, 0.0])  # 2 x 1 / 3 tokens
    w, c = loss_weights(MASK, "token_mean")
    assert c.tolist() == [3.0, 1.0, 2.0, 1.0] and torch.equal(w, MASK)
    w, c = loss_weights(MASK, "seq_mean_token_sum_norm", max_response_length=L)
    assert torch.equal(w, MASK / 4) and c.tolist() == [1.0] * 4


@pytest.mark.parametrize("mode", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum", "seq_mean_token_sum_norm",
                                  "micro_batch_token_mean"])
@pytest.mark.parametrize("micro", [1, 3])
def test_micro_batches_add_up_to_the_mini_batch(mode, micro):
    # weights and normaliser from the whole mini-batch: any trainer micro-batching gives the same loss
    # (a trainer micro-batch of 3 cuts a loss micro-batch of 2 in half: the weights carry it)
    w, c = loss_weights(MASK, mode, L, micro_batch=2)
    whole = aggregate(LOSS, MASK, mode, max_response_length=L, micro_batch=2)
    parts = sum(aggregate(LOSS[i:i + micro], MASK[i:i + micro], normaliser=float(c.sum()), weights=w[i:i + micro])
                for i in range(0, 4, micro))
    assert parts.item() == pytest.approx(whole.item())


def test_mode_errors():
    with pytest.raises(ValueError, match="do not split"):
        loss_weights(MASK[:3], "micro_batch_token_mean", micro_batch=2)
    with pytest.raises(ValueError, match="max_response_length"):
        loss_weights(MASK, "seq_mean_token_sum_norm")
    with pytest.raises(ValueError, match="unknown loss aggregation"):
        loss_weights(MASK, "token_sum")


def test_an_empty_row_is_no_nan():
    mask = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    for mode in ("token_mean", "seq_mean_token_mean", "micro_batch_token_mean"):
        assert math.isfinite(aggregate(torch.ones(2, 2), mask, mode, micro_batch=2).item())


@pytest.mark.parametrize("adv", [-1.0, 0.0, 1.0])
@pytest.mark.parametrize("log_ratio", [-100.0, 100.0, -1e4, 1e4])
def test_huge_log_ratios_give_a_finite_loss_and_gradient(adv, log_ratio):
    # exp(100) overflows float32 (inf; inf x 0 = nan at A = 0); the clamp keeps everything finite
    cfg = LossConfig(kl_coef=0.1, entropy_coef=0.01, rollout_correction="tis")
    logp = torch.full((1, 3), -1.0, requires_grad=True)
    old = (logp.detach() - log_ratio).clone()
    per_tok, pg, _, kl = policy_loss_per_token(logp, old, torch.full((1, 3), adv), torch.ones(1, 3), cfg,
                                               ref_log_probs=logp.detach() + 50.0, rollout_log_probs=old - 200.0)
    loss = aggregate(per_tok, torch.ones(1, 3), "token_mean")
    loss.backward()
    assert math.isfinite(loss.item()) and bool(torch.isfinite(logp.grad).all())
    bound = math.exp(LOG_RATIO_CLAMP)
    assert abs(pg.max().item()) <= 2.0 * bound  # x the TIS cap of 2
    if adv == 0.0:
        assert pg.abs().max().item() == 0.0


def test_clamp_changes_nothing_inside_the_bound():
    lp = torch.tensor([[0.3, -0.7, 19.0]])
    loss, _ = ppo_clip_per_token(lp, torch.zeros(1, 3), -torch.ones(1, 3))
    assert loss[0].tolist() == pytest.approx([math.exp(0.3), 0.8, math.exp(19.0)], rel=1e-6)


def test_temperature_scales_the_logits():
    logits = torch.tensor([[2.0, 0.0, -1.0]])
    z = logits / 0.5
    want_lp = z[0, 0] - torch.logsumexp(z[0], 0)
    assert token_log_probs(logits, torch.tensor([0]), 0.5).item() == pytest.approx(want_lp.item(), rel=1e-5)
    p = torch.softmax(z[0], 0)
    assert entropy_from_logits(logits, 0.5).item() == pytest.approx(float(-(p * p.log()).sum()), rel=1e-5)
    # temperature 1 is the plain softmax
    assert token_log_probs(logits, torch.tensor([1]), 1.0).item() == pytest.approx(float(torch.log_softmax(logits, -1)[0, 1]))
    # a high temperature flattens the distribution: more entropy
    assert entropy_from_logits(logits, 1.2) > entropy_from_logits(logits, 1.0) > entropy_from_logits(logits, 0.6)
