"""Policy-gradient loss terms (pure functions on tensors).

Log-probs are natural-log probabilities (nats) of the sampled response tokens, [B, T]; ``mask`` is
1.0 on real response tokens. Every ``*_per_token`` function returns a [B, T] tensor to be reduced
with `aggregate`, so micro-batches can be accumulated exactly (see `aggregate`'s ``normaliser``).
"""

from __future__ import annotations

from typing import Literal

import torch

LossAgg = Literal["token_mean", "seq_mean_token_mean", "seq_mean_token_sum", "seq_mean_token_sum_norm",
                  "micro_batch_token_mean"]
KLEstimator = Literal["k1", "k2", "k3"]

#: The PPO log-ratio ``logp - old_logp`` is clamped to +-this many nats before ``exp``. exp(20) is about
#: 4.9e8: far outside any clip range (the clipped branch has long won for A > 0; for A < 0 the token's
#: loss is already 4.9e8 x |A|), yet finite in float32 and bf16 (exp overflows at 88.7) for the loss,
#: its sum over a batch and its gradient, which is 0 beyond the clamp. verl uses the same bound.
LOG_RATIO_CLAMP = 20.0


def ppo_clip_per_token(log_probs: torch.Tensor, old_log_probs: torch.Tensor, advantages: torch.Tensor,
                       clip_low: float = 0.2, clip_high: float = 0.2) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO clipped surrogate loss per token and whether the clip was active, both [B, T].

    ratio = exp(clamp(logp - old_logp, +-LOG_RATIO_CLAMP));
    loss = max(-A * ratio, -A * clip(ratio, 1 - clip_low, 1 + clip_high)).
    Separate low/high bounds allow the asymmetric ("clip-higher") variant. The clamp keeps the loss and
    its gradient finite for any finite log-ratio (a token whose ratio exploded stops pulling).
    """
    ratio = torch.exp(torch.clamp(log_probs - old_log_probs, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))
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


def scale_logits(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``logits / temperature`` in float32: the distribution a generator samples from at that
    temperature (verl, vLLM and the hf generator divide the same way). ``temperature`` > 0."""
    z = logits.float()
    return z if temperature == 1.0 else z / temperature


def token_log_probs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log p(token) in nats at ``temperature``, from logits [..., V] and tokens [...] -> [...]."""
    return torch.log_softmax(scale_logits(logits, temperature), dim=-1).gather(-1, tokens[..., None]).squeeze(-1)


def entropy_from_logits(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Entropy (nats) of the categorical distribution at each position at ``temperature``: [..., V] -> [...]."""
    logp = torch.log_softmax(scale_logits(logits, temperature), dim=-1)
    return -(logp.exp() * logp).sum(dim=-1)


def value_loss_per_token(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
                         clip: float = 0.2) -> torch.Tensor:
    """Clipped critic loss per token: 0.5 * max((V - R)^2, (clip(V, V_old +- clip) - R)^2)."""
    clipped = old_values + torch.clamp(values - old_values, -clip, clip)
    return 0.5 * torch.maximum((values - returns).square(), (clipped - returns).square())


def loss_weights(mask: torch.Tensor, mode: LossAgg = "token_mean", max_response_length: int | None = None,
                 micro_batch: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """How `aggregate` weighs each token and counts each sequence: (weights [B, T], counts [B]).

    Every mode is ``loss = sum_{i,t} w_it * l_it / sum_i c_i`` over a mini-batch, with ``n_i`` the real
    tokens of sequence i, ``B`` the sequences, ``L = max_response_length``:

    - token_mean: w = m, c = n_i. All real tokens weigh the same: ``sum l / sum n`` (DAPO; verl's
      ``token-mean`` over a whole mini-batch).
    - seq_mean_token_mean: w = m / n_i, c = 1. Mean over sequences of each one's token mean (GRPO paper).
    - seq_mean_token_sum: w = m, c = 1. Mean over sequences of each one's token sum.
    - seq_mean_token_sum_norm: w = m / L, c = 1: ``sum l / (B * L)``, a constant normaliser, free of
      any length bias (Dr.GRPO; verl's ``seq-mean-token-sum-norm`` at micro-batch 1).
    - micro_batch_token_mean: the rows in consecutive loss micro-batches of ``micro_batch`` sequences
      ``k = 0..K-1``, ``w = micro_batch * m / N_k`` (``N_k`` the micro-batch's real tokens), c = 1:
      ``(1 / K) sum_k (sum_{k's tokens} l / N_k)``, the mean over micro-batches of each one's token mean
      (SimpleRL-Zoo's verl code: per-GPU micro-batch 2, gradients averaged over micro-batches and GPUs).
      ``B`` must be a multiple of ``micro_batch``.

    Counts are whole numbers, so a trainer that sums ``w * l`` and ``c`` over micro-batches and
    data-parallel ranks (Megatron's per-token loss) divides by the same total. A row with no real
    token counts as one token (no 0 / 0).
    """
    m = mask.float()
    n = m.sum(-1)
    ones = torch.ones_like(n)
    if mode == "token_mean":
        return m, n
    if mode == "seq_mean_token_mean":
        return m / n.clamp(min=1.0)[:, None], ones
    if mode == "seq_mean_token_sum":
        return m, ones
    if mode == "seq_mean_token_sum_norm":
        if not max_response_length or max_response_length < 1:
            raise ValueError("seq_mean_token_sum_norm needs max_response_length (tokens, >= 1)")
        return m / float(max_response_length), ones
    if mode == "micro_batch_token_mean":
        b = m.shape[0]
        if micro_batch < 1 or b % micro_batch:
            raise ValueError(f"micro_batch_token_mean: {b} sequences do not split into loss micro-batches of {micro_batch}")
        per_group = n.view(-1, micro_batch).sum(-1).clamp(min=1.0).repeat_interleave(micro_batch)
        return micro_batch * m / per_group[:, None], ones
    raise ValueError(f"unknown loss aggregation {mode!r}")


def aggregate(per_token: torch.Tensor, mask: torch.Tensor, mode: LossAgg = "token_mean",
              normaliser: float | None = None, max_response_length: int | None = None, micro_batch: int = 2,
              weights: torch.Tensor | None = None) -> torch.Tensor:
    """Reduce a [B, T] loss to a scalar with `loss_weights`' mode: ``sum(w * l) / sum(c)``.

    ``normaliser`` replaces ``sum(c)`` and ``weights`` the mode's ``w`` (both computed on the whole
    mini-batch): pass them for a micro-batch so that micro-batch losses add up to exactly the
    mini-batch loss.
    """
    w, c = loss_weights(mask, mode, max_response_length, micro_batch) if weights is None else (weights, None)
    total = (per_token * w.to(per_token.dtype)).sum()
    if normaliser is None:
        if c is None:
            raise ValueError("aggregate: weights given without their normaliser")
        normaliser = c.sum().clamp(min=1.0)
    return total / normaliser


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
    mult, kl, gap = mismatch_per_token(trainer_log_probs, rollout_log_probs)
    m = mask.float()
    n = m.sum().clamp(min=1)
    return {"token_mult_prob_error": float((mult * m).sum() / n),
            "kl": float((kl * m).sum() / n),
            "max_abs_diff": float((gap * m).max()) if bool(m.any()) else 0.0}


def mismatch_per_token(trainer_log_probs: torch.Tensor, rollout_log_probs: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The per-token terms of `mismatch_metrics`, [B, T] each (float32): exp(|d|), -d and |d|, with
    d = logp_trainer - logp_rollout (nats). Trainers reduce them over their own tokens and ranks."""
    diff = (trainer_log_probs - rollout_log_probs).float()
    gap = diff.abs()
    return torch.exp(gap), -diff, gap


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
