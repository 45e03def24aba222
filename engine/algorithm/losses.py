"""Policy-gradient loss terms (pure functions on tensors).

Log-probs are natural-log probabilities (nats) of the sampled response tokens, [B, T]; ``mask`` is
1.0 on real response tokens. Every ``*_per_token`` function returns a [B, T] tensor to be reduced
with `aggregate`, so micro-batches can be accumulated exactly (see `aggregate`'s ``normaliser``).
"""

from __future__ import annotations

from typing import Literal

import torch

LossAgg = Literal["token_mean", "seq_mean_token_mean", "seq_mean_token_sum"]
KLEstimator = Literal["k1", "k2", "k3"]


def ppo_clip_per_token(log_probs: torch.Tensor, old_log_probs: torch.Tensor, advantages: torch.Tensor,
                       clip_low: float = 0.2, clip_high: float = 0.2) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO clipped surrogate loss per token and whether the clip was active, both [B, T].

    ratio = exp(logp - old_logp); loss = max(-A * ratio, -A * clip(ratio, 1 - clip_low, 1 + clip_high)).
    Separate low/high bounds allow the asymmetric ("clip-higher") variant.
    """
    ratio = torch.exp(log_probs - old_log_probs)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    loss = torch.maximum(unclipped, clipped)
    return loss, (clipped > unclipped).float()


def kl_per_token(log_probs: torch.Tensor, ref_log_probs: torch.Tensor, estimator: KLEstimator = "k3",
                 clamp: float = 10.0) -> torch.Tensor:
    """Per-token estimate of KL(policy || reference) from samples of the policy (nats), [B, T].

    With ``d = ref_logp - logp`` (log q/p): k1 = -d; k2 = d^2 / 2; k3 = exp(d) - d - 1 (verl's
    "low_var_kl", always >= 0), clamped to [-clamp, clamp].
    """
    d = ref_log_probs - log_probs
    if estimator == "k1":
        return -d
    if estimator == "k2":
        return 0.5 * d.square()
    if estimator == "k3":
        d = torch.clamp(d, -20.0, 20.0)  # keep exp finite; the result is clamped below anyway
        return torch.clamp(torch.exp(d) - d - 1.0, -clamp, clamp)
    raise ValueError(f"unknown KL estimator {estimator!r} (k1, k2, k3)")


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of the categorical distribution at each position: [..., V] -> [...]."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(dim=-1)


def value_loss_per_token(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
                         clip: float = 0.2) -> torch.Tensor:
    """Clipped critic loss per token: 0.5 * max((V - R)^2, (clip(V, V_old +- clip) - R)^2)."""
    clipped = old_values + torch.clamp(values - old_values, -clip, clip)
    return 0.5 * torch.maximum((values - returns).square(), (clipped - returns).square())


def aggregate(per_token: torch.Tensor, mask: torch.Tensor, mode: LossAgg = "token_mean",
              normaliser: float | None = None) -> torch.Tensor:
    """Reduce a [B, T] loss to a scalar.

    token_mean: sum over all real tokens / number of real tokens (the recipe's default).
    seq_mean_token_mean: mean over sequences of each sequence's token mean.
    seq_mean_token_sum: mean over sequences of each sequence's token sum.
    ``normaliser`` replaces the denominator (tokens for token_mean, sequences otherwise): pass the
    mini-batch total so micro-batch losses add up to exactly the mini-batch loss.
    """
    m = mask.to(per_token.dtype)
    if mode == "token_mean":
        total = (per_token * m).sum()
        return total / (normaliser if normaliser is not None else m.sum().clamp(min=1.0))
    if mode == "seq_mean_token_mean":
        per_seq = (per_token * m).sum(-1) / m.sum(-1).clamp(min=1.0)
    elif mode == "seq_mean_token_sum":
        per_seq = (per_token * m).sum(-1)
    else:
        raise ValueError(f"unknown loss aggregation {mode!r}")
    return per_seq.sum() / (normaliser if normaliser is not None else max(per_seq.numel(), 1))


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over positions where ``mask`` is 1."""
    m = mask.to(x.dtype)
    return (x * m).sum() / m.sum().clamp(min=1.0)


def tis_weights(old_log_probs: torch.Tensor, rollout_log_probs: torch.Tensor, cap: float = 2.0) -> torch.Tensor:
    """Truncated importance weights min(pi_old / pi_rollout, cap) per token, [B, T], no gradient.

    ``old_log_probs`` are the trainer's log-probs of the sampled tokens before the update and
    ``rollout_log_probs`` the generator's; the weight corrects the policy gradient for sampling from a
    generator whose numerics differ from the trainer's (bf16 kernels, FP8 rollouts).
    """
    return torch.exp(old_log_probs - rollout_log_probs).clamp(max=cap).detach()


def mismatch_metrics(trainer_log_probs: torch.Tensor, rollout_log_probs: torch.Tensor,
                     mask: torch.Tensor) -> dict[str, float]:
    """How far the generator's log-probs are from the trainer's on the same tokens (the refit-parity
    signal), over the response tokens of ``mask``.

    token_mult_prob_error: mean of exp(|logp_trainer - logp_rollout|) (1.0 is perfect parity; about
    1.01-1.04 is typical in bf16); kl: mean of logp_rollout - logp_trainer, the k1 estimate of
    KL(rollout || trainer) from the rollout's own samples (nats); max_abs_diff: the largest gap (nats).
    """
    diff = (trainer_log_probs - rollout_log_probs).float()
    m = mask.float()
    n = m.sum().clamp(min=1)
    return {"token_mult_prob_error": float((torch.exp(diff.abs()) * m).sum() / n),
            "kl": float((-diff * m).sum() / n),
            "max_abs_diff": float((diff.abs() * m).max()) if bool(m.any()) else 0.0}


def policy_loss_per_token(log_probs: torch.Tensor, old_log_probs: torch.Tensor, advantages: torch.Tensor,
                          entropy: torch.Tensor, cfg, ref_log_probs: torch.Tensor | None = None,
                          rollout_log_probs: torch.Tensor | None = None
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The RL objective per token, as every trainer optimises it, [B, T]: the PPO-clip term (weighted by
    the truncated importance weight with ``cfg.rollout_correction == "tis"``), minus ``entropy_coef`` x
    entropy, plus ``kl_coef`` x KL to the reference. ``cfg``: the loss settings
    (`engine.backends.config.LossConfig`). Returns (loss, pg term, clip active, kl or None)."""
    pg, clipped = ppo_clip_per_token(log_probs, old_log_probs, advantages, cfg.clip_low, cfg.clip_high)
    if cfg.rollout_correction == "tis":
        pg = pg * tis_weights(old_log_probs, rollout_log_probs, cfg.tis_cap)
    loss = pg
    if cfg.entropy_coef > 0:
        loss = loss - cfg.entropy_coef * entropy
    kl = None
    if cfg.kl_coef > 0:
        kl = kl_per_token(log_probs, ref_log_probs, cfg.kl_estimator, cfg.kl_clamp)
        loss = loss + cfg.kl_coef * kl
    return loss, pg, clipped, kl
