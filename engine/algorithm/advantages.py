"""Advantage estimators (pure functions on tensors).

Shapes: B sequences, T response tokens. ``mask`` [B, T] is 1.0 on real response tokens and 0.0 on
padding. Rewards are in reward units (1 = correct under the default reward).
"""

from __future__ import annotations

import torch


def group_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-6,
                     scale_by_std: bool = True) -> torch.Tensor:
    """GRPO advantage of each sequence from the rewards of its group, [B] -> [B].

    Sequences are grouped in order: rows ``[g*n, (g+1)*n)`` are the ``n = group_size`` samples of
    prompt ``g``. GRPO: ``(r - mean) / (std + eps)`` with the unbiased (n-1) std, as in verl;
    Dr.GRPO (``scale_by_std=False``): ``r - mean``. A group whose rewards are all equal gets 0.
    """
    if rewards.dim() != 1 or rewards.numel() % group_size:
        raise ValueError(f"rewards must be 1-D with a multiple of {group_size} entries, got {tuple(rewards.shape)}")
    r = rewards.float().view(-1, group_size)
    centred = r - r.mean(dim=1, keepdim=True)
    if scale_by_std:
        std = r.std(dim=1, keepdim=True, unbiased=True) if group_size > 1 else torch.zeros_like(r[:, :1])
        denom = std + eps
        # an all-equal group has centred == 0; keep it 0 even when eps == 0 (no 0/0)
        centred = torch.where(denom > 0, centred / denom.clamp(min=torch.finfo(r.dtype).tiny), torch.zeros_like(centred))
    return centred.reshape(-1)


def broadcast_to_tokens(seq_values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Give every response token its sequence's value: [B] -> [B, T] (0 on padding)."""
    return seq_values[:, None].to(mask.dtype) * mask


def gae(token_rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
        lam: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over response tokens; returns (advantages, returns), [B, T].

    ``token_rewards`` [B, T] (usually the outcome reward on the last real token), ``values`` [B, T]
    the critic's value before each token. The value after the last real token is 0 (episode end).
    ``delta_t = r_t + gamma * V_{t+1} - V_t``; ``A_t = delta_t + gamma * lam * A_{t+1}``; returns
    ``A + V``. Padding positions get 0 and do not propagate.
    """
    b, t = token_rewards.shape
    adv = torch.zeros_like(token_rewards, dtype=torch.float32)
    next_value = torch.zeros(b, dtype=torch.float32, device=values.device)
    next_adv = torch.zeros(b, dtype=torch.float32, device=values.device)
    m = mask.float()
    for i in reversed(range(t)):
        delta = token_rewards[:, i].float() + gamma * next_value - values[:, i].float()
        a = delta + gamma * lam * next_adv
        adv[:, i] = a * m[:, i]
        # padding: carry the following position's state through unchanged
        next_value = torch.where(m[:, i] > 0, values[:, i].float(), next_value)
        next_adv = torch.where(m[:, i] > 0, a, next_adv)
    returns = (adv + values.float()) * m
    return adv, returns


def whiten(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Normalise ``x`` to zero mean, unit variance over the masked positions (PPO advantages)."""
    m = mask.float()
    n = m.sum().clamp(min=1)
    mean = (x * m).sum() / n
    var = (((x - mean) * m) ** 2).sum() / n
    return (x - mean) * torch.rsqrt(var + eps) * m
