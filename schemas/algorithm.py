"""`algorithm:` advantage estimator, policy loss, KL and entropy terms."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveInt

from schemas.common import Section


class AlgorithmSpec(Section):
    """The RL objective (defaults: the SimpleRL-Zoo GRPO recipe)."""

    advantage: Literal["grpo", "dr_grpo", "gae"] = Field("grpo", description="grpo: (r-mean)/(std+eps) per group; dr_grpo: r-mean; gae: PPO with a critic.")
    norm_eps: float = Field(1e-6, gt=0, description="Epsilon added to the group std (reward units).")
    clip_low: float = Field(0.2, ge=0, description="PPO ratio lower clip: ratio >= 1 - clip_low.")
    clip_high: float = Field(0.2, ge=0, description="PPO ratio upper clip: ratio <= 1 + clip_high.")
    loss_agg: Literal["auto", "token_mean", "seq_mean_token_mean", "seq_mean_token_sum", "seq_mean_token_sum_norm",
                      "micro_batch_token_mean"] = Field(
        "auto", description="How per-token losses are reduced over a mini-batch (README: Loss aggregation): token_mean "
        "(all tokens of the mini-batch), seq_mean_token_mean, seq_mean_token_sum, seq_mean_token_sum_norm (Dr.GRPO: "
        "token sums / (sequences x data.max_response_length)), micro_batch_token_mean (SimpleRL-Zoo's code: the mean "
        "over loss micro-batches of loss_micro_batch sequences of each one's token mean); auto: "
        "seq_mean_token_sum_norm with advantage dr_grpo, else token_mean."
    )
    loss_micro_batch: PositiveInt = Field(2, description="Sequences per loss micro-batch of micro_batch_token_mean (the "
                                          "paper's per-GPU micro-batch, 2); independent of trainer.micro_batch_size.")
    kl_coef: float = Field(1e-4, ge=0, description="Weight of the KL(policy || reference) loss term.")
    kl_estimator: Literal["k1", "k2", "k3"] = Field("k3", description="KL estimator; k3 is verl's low_var_kl.")
    kl_clamp: float = Field(10.0, gt=0, description="k3 values are clamped to [-kl_clamp, kl_clamp] (nats).")
    entropy_coef: float = Field(1e-3, ge=0, description="Weight of the entropy bonus.")
    ppo_mini_batch_size: PositiveInt = Field(256, description="Prompts per optimizer step (x rollout.n sequences).")
    ppo_epochs: PositiveInt = Field(1, description="Passes over each rollout batch.")
    gamma: float = Field(1.0, ge=0, le=1, description="Discount (gae only).")
    lam: float = Field(1.0, ge=0, le=1, description="GAE lambda (gae only).")
    critic_lr: float = Field(1e-5, gt=0, description="Critic learning rate (gae only).")
    rollout_correction: Literal["none", "tis"] = Field("none", description="Off-policy correction for the trainer/generator mismatch: tis weights each token's loss by min(p_trainer/p_rollout, tis_cap) (truncated importance sampling, needs the generator's log-probs).")
    tis_cap: float = Field(2.0, gt=0, description="Upper bound of the truncated importance weight (tis only).")
