"""The role workers: actor (trainer role), rollout (generator), reference, reward.

Each worker is a plain class built from a `WorkerSetup` (the plan as JSON plus resolved local paths),
so the same class runs in-process (the embedded default) or as a Ray actor (`engine.runtime.group`).
Backends are chosen from the plan (`plan.rollout.backend`, `plan.trainer.backend`). The GPU backends
(vLLM, Megatron-core) are the roadmap's next step; until they land, `engine.runtime.resources`
refuses a plan that names them before anything is loaded.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from functools import partial
from typing import Any, Optional

import torch


@dataclass(frozen=True)
class WorkerSetup:
    """What every worker needs: the plan (JSON), the base model and tokenizer folders, the device.

    device: "cpu" or "cuda[:i]"; threads: torch intra-op threads on CPU (None = leave as is).
    """

    plan_json: str
    model_path: str
    tokenizer_path: str
    device: str = "cpu"
    threads: Optional[int] = None

    def plan(self):
        from compiler.plan import Plan

        return Plan.from_json(self.plan_json)


def _prepare(setup: WorkerSetup) -> None:
    if setup.threads and setup.device == "cpu":
        torch.set_num_threads(setup.threads)


def _load_policy(setup: WorkerSetup) -> torch.nn.Module:
    from engine.modeling import load_model

    return load_model(setup.model_path, dtype=torch.float32, device=setup.device)


class ActorWorker:
    """The trainer role: owns the policy (and the critic for `algorithm.advantage = gae`)."""

    def __init__(self, setup: WorkerSetup) -> None:
        _prepare(setup)
        plan = setup.plan()
        spec = plan.spec
        from engine.backends.torch_trainer import BatchConfig, LossConfig, OptimConfig, TorchTrainer

        model = _load_policy(setup)
        if spec.model.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        a, t = spec.algorithm, spec.trainer
        critic = _critic_from(model) if a.advantage == "gae" else None
        mini = a.ppo_mini_batch_size * spec.rollout.n
        micro = plan.trainer.micro_batch_size if plan.trainer else t.micro_batch_size
        self.trainer = TorchTrainer(
            model,
            OptimConfig(lr=t.lr, betas=tuple(t.betas), weight_decay=t.weight_decay,
                        warmup_steps=t.warmup_steps, grad_clip=t.grad_clip),
            LossConfig(clip_low=a.clip_low, clip_high=a.clip_high, loss_agg=a.loss_agg, kl_coef=a.kl_coef,
                       kl_estimator=a.kl_estimator, kl_clamp=a.kl_clamp, entropy_coef=a.entropy_coef),
            BatchConfig(mini_batch=mini, micro_batch=micro, log_prob_micro_batch=t.log_prob_micro_batch_size,
                        epochs=a.ppo_epochs),
            device=setup.device, bf16=spec.model.dtype == "bfloat16", critic=critic, critic_lr=a.critic_lr,
        )

    @property
    def model(self) -> torch.nn.Module:
        """The policy module (shared with an in-process colocated generator)."""
        return self.trainer.model

    def compute_log_probs(self, batch: dict) -> torch.Tensor:
        return self.trainer.compute_log_probs(batch)

    def compute_values(self, batch: dict) -> torch.Tensor:
        return self.trainer.compute_values(batch)

    def update(self, batch: dict) -> dict[str, float]:
        return self.trainer.update(batch)

    def weights(self) -> dict[str, torch.Tensor]:
        return {n: w.cpu() for n, w in self.trainer.weights()}

    def state_dict(self) -> dict[str, Any]:
        return self.trainer.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.trainer.load_state_dict(state)

    def export_hf(self, path: str) -> None:
        self.trainer.export_hf(path)

    def ping(self) -> str:
        return "actor"


def _critic_from(policy: torch.nn.Module) -> torch.nn.Module:
    """A value model: the policy's backbone (copied weights) with a fresh scalar head."""
    from transformers import AutoModelForTokenClassification

    cfg = copy.deepcopy(policy.config)
    cfg.num_labels = 1
    critic = AutoModelForTokenClassification.from_config(cfg)
    backbone = {k: v for k, v in policy.state_dict().items() if not k.startswith("lm_head")}
    critic.load_state_dict(backbone, strict=False)
    torch.nn.init.zeros_(critic.score.weight)
    if getattr(critic.score, "bias", None) is not None:
        torch.nn.init.zeros_(critic.score.bias)
    return critic.to(next(policy.parameters()).device)


class RolloutWorker:
    """The generator role. In-process and colocated it may share the actor's module (no weight copy)."""

    def __init__(self, setup: WorkerSetup, shared_model: Optional[torch.nn.Module] = None) -> None:
        _prepare(setup)
        plan = setup.plan()
        from engine.backends.hf_generator import HFGenerator
        from engine.modeling import load_tokenizer

        tok = load_tokenizer(setup.tokenizer_path)
        model = shared_model if shared_model is not None else _load_policy(setup)
        self.generator = HFGenerator(model, tok, plan.spec.rollout.micro_batch_size, setup.device)

    def generate(self, prompt_ids, n, params, seed):
        return self.generator.generate(prompt_ids, n, params, seed)

    def load_weights(self, weights) -> None:
        self.generator.load_weights(weights)

    def sleep(self) -> None:
        self.generator.sleep()

    def wake(self) -> None:
        self.generator.wake()

    def ping(self) -> str:
        return "rollout"


class ReferenceWorker:
    """The reference role: frozen base-model log-probs for the KL term."""

    def __init__(self, setup: WorkerSetup) -> None:
        _prepare(setup)
        plan = setup.plan()
        self.model = _load_policy(setup).eval()
        self.micro = plan.spec.trainer.log_prob_micro_batch_size
        self.device = torch.device(setup.device)
        self.bf16 = plan.spec.model.dtype == "bfloat16" and self.device.type == "cuda"

    def compute_log_probs(self, batch: dict) -> torch.Tensor:
        from engine.backends.torch_trainer import map_micro_batches, response_log_probs

        return map_micro_batches(partial(response_log_probs, self.model), batch, self.micro, self.device, self.bf16)

    def ping(self) -> str:
        return "reference"


class RewardWorker:
    """The reward role: rule-based grading with `engine.reward.Grader` (its own process pool)."""

    def __init__(self, setup: WorkerSetup, end_tokens: tuple[str, ...] = ()) -> None:
        from engine.reward import Grader, RewardConfig

        r = setup.plan().spec.reward
        cfg = RewardConfig(format=r.format, timeout_s=r.timeout_s, workers=r.workers, correct=r.correct,
                           wrong=r.wrong, format_penalty=r.format_penalty)
        self.grader = Grader(cfg, end_tokens=end_tokens)

    def grade(self, responses: list[str], ground_truths: list[str]) -> dict[str, list]:
        """Rewards and verdicts, one per response."""
        res = self.grader.grade_batch(responses, ground_truths)
        return {"reward": [r.reward for r in res], "correct": [bool(r.correct) for r in res],
                "boxed": [bool(r.boxed) for r in res], "status": [r.status for r in res],
                "extracted": [r.extracted for r in res]}

    def stats(self) -> dict[str, int]:
        return dict(self.grader.stats())

    def close(self) -> None:
        self.grader.close()

    def ping(self) -> str:
        return "reward"
