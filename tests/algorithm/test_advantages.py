"""GRPO / Dr.GRPO group advantages and GAE against hand-worked numbers."""

import math

import pytest
import torch

from engine.algorithm.advantages import broadcast_to_tokens, gae, group_advantages, whiten


def test_grpo_two_right_two_wrong():
    # mean 0.5; unbiased std sqrt(4 * 0.25 / 3) = 0.57735; (1 - 0.5) / 0.57735 = 0.866025
    adv = group_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0]), group_size=4, eps=1e-6)
    expected = 0.5 / (math.sqrt(1 / 3) + 1e-6)
    assert adv.tolist() == pytest.approx([expected, -expected, -expected, expected], abs=1e-6)


def test_grpo_groups_are_independent():
    # group 1: [2, 0] -> mean 1, std sqrt(2) -> +-0.70711; group 2 all equal -> 0
    adv = group_advantages(torch.tensor([2.0, 0.0, 1.0, 1.0]), group_size=2, eps=0.0)
    assert adv.tolist() == pytest.approx([1 / math.sqrt(2), -1 / math.sqrt(2), 0.0, 0.0], abs=1e-6)


def test_dr_grpo_has_no_std():
    adv = group_advantages(torch.tensor([1.0, 0.0, 0.0, 0.0]), group_size=4, scale_by_std=False)
    assert adv.tolist() == pytest.approx([0.75, -0.25, -0.25, -0.25])


def test_all_equal_group_gets_zero_not_nan():
    adv = group_advantages(torch.tensor([1.0, 1.0, 1.0]), group_size=3)
    assert adv.tolist() == [0.0, 0.0, 0.0]


def test_group_size_must_divide():
    with pytest.raises(ValueError):
        group_advantages(torch.tensor([1.0, 0.0, 1.0]), group_size=2)


def test_broadcast_to_tokens_zero_on_padding():
    out = broadcast_to_tokens(torch.tensor([2.0, -1.0]), torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]]))
    assert out.tolist() == [[2.0, 2.0, 0.0], [-1.0, 0.0, 0.0]]


def test_gae_gamma_lambda_one():
    # A2 = 1 - 0.7 = 0.3; A1 = (0.7 - 0.6) + 0.3 = 0.4; A0 = (0.6 - 0.5) + 0.4 = 0.5; returns = 1
    adv, ret = gae(torch.tensor([[0.0, 0.0, 1.0]]), torch.tensor([[0.5, 0.6, 0.7]]), torch.ones(1, 3))
    assert adv[0].tolist() == pytest.approx([0.5, 0.4, 0.3])
    assert ret[0].tolist() == pytest.approx([1.0, 1.0, 1.0])


def test_gae_lambda_half():
    # A2 = 0.3; A1 = 0.1 + 0.5 * 0.3 = 0.25; A0 = 0.1 + 0.5 * 0.25 = 0.225
    adv, _ = gae(torch.tensor([[0.0, 0.0, 1.0]]), torch.tensor([[0.5, 0.6, 0.7]]), torch.ones(1, 3), 1.0, 0.5)
    assert adv[0].tolist() == pytest.approx([0.225, 0.25, 0.3])


def test_gae_padding_does_not_leak():
    # the value 9.0 on the padded position must not be bootstrapped from
    adv, ret = gae(torch.tensor([[0.0, 1.0, 0.0]]), torch.tensor([[0.5, 0.6, 9.0]]),
                   torch.tensor([[1.0, 1.0, 0.0]]))
    assert adv[0].tolist() == pytest.approx([0.5, 0.4, 0.0])
    assert ret[0].tolist() == pytest.approx([1.0, 1.0, 0.0])


def test_whiten_masked():
    x = torch.tensor([[1.0, 3.0, 100.0]])
    out = whiten(x, torch.tensor([[1.0, 1.0, 0.0]]))
    assert out[0].tolist() == pytest.approx([-1.0, 1.0, 0.0], abs=1e-4)
