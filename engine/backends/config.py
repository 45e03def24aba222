"""What every trainer backend takes from the plan: optimizer, loss and batch-size settings.

The torch and megatron trainers build these from the same plan with `from_plan`, so both optimise the
same objective (`engine.algorithm.losses`) with the same sizes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from compiler.plan import Plan


@dataclass(frozen=True)
class OptimConfig:
    """AdamW settings: lr (per step), warm-up (optimizer steps), grad clip (global L2 norm)."""

    lr: float = 5e-7
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.01
    warmup_steps: int = 0
    grad_clip: float = 1.0

    def lr_factor(self, step: int) -> float:
        """The learning rate of optimizer step ``step`` (0-based) as a fraction of ``lr``: a linear
        warm-up over ``warmup_steps`` steps (step s gets (s + 1) / warmup_steps), then 1."""
        warm = self.warmup_steps
        return min(1.0, (step + 1) / warm) if warm else 1.0


@dataclass(frozen=True)
class LossConfig:
    """Policy-loss settings (see engine.algorithm.losses). ``temperature``: log-probs and entropy are those
    of softmax(logits / temperature), the distribution the generator sampled from; ``loss_micro_batch``
    (sequences) and ``max_response_length`` (tokens) are the constants of the micro_batch_token_mean and
    seq_mean_token_sum_norm aggregations."""

    clip_low: float = 0.2
    clip_high: float = 0.2
    loss_agg: str = "token_mean"
    temperature: float = 1.0
    loss_micro_batch: int = 2
    max_response_length: int = 0
    kl_coef: float = 1e-4
    kl_estimator: str = "k3"
    kl_clamp: float = 10.0
    entropy_coef: float = 1e-3
    rollout_correction: str = "none"
    tis_cap: float = 2.0


@dataclass(frozen=True)
class BatchConfig:
    """Sizes in sequences: mini_batch (per optimizer step), micro_batch (per forward/backward)."""

    mini_batch: int
    micro_batch: int
    log_prob_micro_batch: int
    epochs: int = 1


def from_plan(plan: "Plan") -> tuple[OptimConfig, LossConfig, BatchConfig]:
    """The three configs of a feasible ``plan`` (its ``optim``, ``objective``, and the sizes of its
    ``trainer`` and ``schedule`` in sequences per data-parallel rank)."""
    t, o, obj = plan.trainer, plan.optim, plan.objective
    return (OptimConfig(lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay, warmup_steps=o.warmup_steps,
                        grad_clip=o.grad_clip),
            LossConfig(clip_low=obj.clip_low, clip_high=obj.clip_high, loss_agg=obj.loss_agg, temperature=obj.temperature,
                       loss_micro_batch=obj.loss_micro_batch, max_response_length=obj.max_response_length,
                       kl_coef=obj.kl_coef, kl_estimator=obj.kl_estimator, kl_clamp=obj.kl_clamp,
                       entropy_coef=obj.entropy_coef, rollout_correction=obj.rollout_correction, tis_cap=obj.tis_cap),
            BatchConfig(mini_batch=plan.schedule.mini_batch_sequences // t.data_parallel, micro_batch=t.micro_batch_size,
                        log_prob_micro_batch=t.log_prob_micro_batch_size, epochs=plan.schedule.epochs))
