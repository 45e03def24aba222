"""PPO-clip, KL estimators, entropy and loss aggregation against hand-worked numbers."""

import math

import pytest
import torch

from engine.algorithm.losses import (aggregate, entropy_from_logits, kl_per_token, ppo_clip_per_token,
                                     value_loss_per_token)

LOG = math.log


def _clip(ratio, adv, lo=0.2, hi=0.2):
    loss, clipped = ppo_clip_per_token(torch.tensor([[LOG(ratio)]]), torch.zeros(1, 1), torch.tensor([[adv]]), lo, hi)
    return loss.item(), clipped.item()


def test_ppo_clip_four_cases():
    # ratio 1.5, A=+1: max(-1.5, -1.2) = -1.2 (clipped); A=-1: max(1.5, 1.2) = 1.5 (not clipped)
    assert _clip(1.5, 1.0) == pytest.approx((-1.2, 1.0))
    assert _clip(1.5, -1.0) == pytest.approx((1.5, 0.0))
    # ratio 0.5, A=+1: max(-0.5, -0.8) = -0.5; A=-1: max(0.5, 0.8) = 0.8 (clipped)
    assert _clip(0.5, 1.0) == pytest.approx((-0.5, 0.0))
    assert _clip(0.5, -1.0) == pytest.approx((0.8, 1.0))


def test_ppo_clip_asymmetric_bounds():
    # clip-higher: upper bound 1 + 0.28, lower bound 1 - 0.2
    assert _clip(1.5, 1.0, 0.2, 0.28)[0] == pytest.approx(-1.28)
    assert _clip(0.5, -1.0, 0.2, 0.28)[0] == pytest.approx(0.8)


def test_ppo_on_policy_is_minus_advantage():
    loss, clipped = ppo_clip_per_token(torch.zeros(2, 2), torch.zeros(2, 2), torch.tensor([[2.0, 2.0], [-1.0, -1.0]]))
    assert loss.tolist() == [[-2.0, -2.0], [1.0, 1.0]]
    assert clipped.sum() == 0


def test_kl_estimators_hand_worked():
    # p = 0.5, q = 0.25: d = log(q/p) = -ln 2
    lp, ref = torch.tensor([[LOG(0.5)]]), torch.tensor([[LOG(0.25)]])
    ln2 = math.log(2)
    assert kl_per_token(lp, ref, "k1").item() == pytest.approx(ln2)
    assert kl_per_token(lp, ref, "k2").item() == pytest.approx(0.5 * ln2 ** 2)
    assert kl_per_token(lp, ref, "k3").item() == pytest.approx(0.5 + ln2 - 1.0)


def test_k3_is_clamped_and_finite():
    kl = kl_per_token(torch.tensor([[-50.0]]), torch.tensor([[0.0]]), "k3", clamp=10.0)
    assert kl.item() == 10.0
    assert kl_per_token(torch.tensor([[0.0]]), torch.tensor([[0.0]]), "k3").item() == 0.0


def test_kl_unknown_estimator():
    with pytest.raises(ValueError):
        kl_per_token(torch.zeros(1, 1), torch.zeros(1, 1), "k4")


def test_entropy_uniform_and_peaked():
    assert entropy_from_logits(torch.zeros(1, 4)).item() == pytest.approx(math.log(4))
    assert entropy_from_logits(torch.tensor([[0.0, -1e9]])).item() == pytest.approx(0.0, abs=1e-6)


LOSS = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])


def test_aggregation_modes():
    assert aggregate(LOSS, MASK, "token_mean").item() == pytest.approx(10 / 4)
    assert aggregate(LOSS, MASK, "seq_mean_token_mean").item() == pytest.approx((2 + 4) / 2)
    assert aggregate(LOSS, MASK, "seq_mean_token_sum").item() == pytest.approx((6 + 4) / 2)


def test_aggregation_micro_batches_add_up():
    # token_mean with the mini-batch token count as normaliser: per-row parts sum to the whole
    whole = aggregate(LOSS, MASK, "token_mean")
    parts = sum(aggregate(LOSS[i:i + 1], MASK[i:i + 1], "token_mean", normaliser=4.0) for i in range(2))
    assert parts.item() == pytest.approx(whole.item())
    whole = aggregate(LOSS, MASK, "seq_mean_token_mean")
    parts = sum(aggregate(LOSS[i:i + 1], MASK[i:i + 1], "seq_mean_token_mean", normaliser=2.0) for i in range(2))
    assert parts.item() == pytest.approx(whole.item())


def test_value_loss_clipped():
    # V=1.0, V_old=0.5, R=0: unclipped 0.5*1 = 0.5; clipped V=0.7 -> 0.5*0.49 = 0.245; max = 0.5
    v = value_loss_per_token(torch.tensor([[1.0]]), torch.tensor([[0.5]]), torch.tensor([[0.0]]), clip=0.2)
    assert v.item() == pytest.approx(0.5)
    # V=0.0, V_old=0.5, R=1: unclipped 0.5; clipped V=0.3 -> 0.5*0.49 = 0.245; max = 0.5
    v = value_loss_per_token(torch.tensor([[0.0]]), torch.tensor([[0.5]]), torch.tensor([[1.0]]), clip=0.2)
    assert v.item() == pytest.approx(0.5)
