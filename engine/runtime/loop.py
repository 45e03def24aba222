"""The zero-RL training loop: execute a `Plan` in a run folder.

`rl_step` is one RL step (GRPO by default), top to bottom:

1. take the step's prompts (a pure function of seed and step, so a resume draws the same ones);
2. sample ``rollout.n`` responses per prompt with the generator, then let it sleep (colocated);
3. grade them with the reward;
4. old log-probs (policy before the update), reference log-probs (KL), critic values (gae);
5. advantages: group-normalised rewards (grpo / dr_grpo) or GAE;
6. the trainer's PPO-clip update (mini-batches, micro-batches, grad clip, AdamW);
7. stream the new weights into the generator (`engine.runtime.sync`);
8. metrics (reward, lengths, trainer, trainer-vs-generator parity, behaviour, time).

`train` wraps it: roles, data, resume, the step-0 parity gate and base-model evaluation, logging and
checkpoints. Run folder: ``plan.json``, ``run.json`` (aim hash, base model, data report),
``metrics.jsonl``, ``.aim/``, ``checkpoints/step_NNNNNN/``, ``final/`` (HF export), ``summary.json``.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

import numpy as np
import torch

from engine.algorithm.advantages import broadcast_to_tokens, gae, group_advantages, whiten
from engine.algorithm.losses import mismatch_metrics
from engine.core.generation import SamplingParams
from engine.data import prompts as P
from engine.data.loading import load_benchmarks, load_prompts
from engine.data.selection import select_by_pass_rate
from engine.evaluation.behaviour import behaviour_ratios
from engine.evaluation.runner import evaluate_all
from engine.model_files import resolve_model_files
from engine.runtime import checkpoint as C
from engine.runtime import run_folder
from engine.runtime.batch import pack_groups
from engine.runtime.resources import check_resources
from engine.runtime.roles import Roles
from engine.runtime.sync import StepOrder
from engine.core.threads import apply_threads
from engine.runtime.tracking import AimTracker, MetricsLog, Progress
from engine.sampling import sampling_params, step_seed
from engine.core import rollouts as R
from engine.core.atomic import write_json_atomic, write_text_atomic

if TYPE_CHECKING:  # annotations only: no import at run time
    from compiler.plan import Plan


#: Metrics that measure time or throughput (they differ between otherwise identical runs).
TIMING_KEYS = ("time/", "perf/")


class ParityError(RuntimeError):
    """At step 0 the generator's log-probs disagree with the trainer's on the same tokens: the weights
    were not synced (or converted) correctly. Nothing was trained."""


class NonFiniteRewardError(ValueError):
    """A step's rewards hold nan or inf: the run stops at that step, before its update."""


def _write_json(path: Path, data: Any) -> None:
    write_json_atomic(path, data, indent=2, sort_keys=True, default=str)


def rollout_metrics(rewards: torch.Tensor, correct: list[bool], lengths: torch.Tensor,
                    reasons: list[str], group_size: int) -> dict[str, float]:
    """Reward, accuracy and response-length statistics of one rollout batch.

    response_length/clip_ratio: share of responses cut at the length limit; stopped_length: mean
    length (tokens) of the responses that ended by themselves.
    """
    lengths = lengths.float()
    stopped = torch.tensor([r == "stop" for r in reasons])
    g = rewards.view(-1, group_size)
    solved = torch.tensor(correct, dtype=torch.float32).view(-1, group_size)
    return {
        "reward/mean": float(rewards.mean()),
        "reward/std": float(rewards.std()) if rewards.numel() > 1 else 0.0,
        "reward/accuracy": float(np.mean(correct)),
        "reward/groups_all_equal": float((g.max(1).values == g.min(1).values).float().mean()),
        "reward/pass_at_n": float((solved.max(1).values > 0).float().mean()),
        "response_length/mean": float(lengths.mean()),
        "response_length/max": float(lengths.max()),
        "response_length/min": float(lengths.min()),
        "response_length/clip_ratio": float((~stopped).float().mean()),
        "response_length/stopped_length": float(lengths[stopped].mean()) if bool(stopped.any()) else 0.0,
    }


def rollout_log_probs_tensor(log_probs: list[list[float]], mask: torch.Tensor) -> torch.Tensor:
    """The generator's per-token log-probs as a [B, T] tensor aligned with ``response_mask``."""
    from engine.runtime.batch import ragged

    return ragged(log_probs, mask.shape[1], 0.0, torch.float32)[0]


@dataclass
class StepInputs:
    """What one RL step reads besides the roles: the run's fixed settings."""

    plan: Plan
    train_set: P.PromptSet
    sampling: SamplingParams
    pad_id: int
    order: StepOrder
    writer: Optional[R.RolloutWriter] = None  # saves every step's rollouts (tracking.save_rollouts)


def rl_step(roles: Roles, inp: StepInputs, step: int) -> dict[str, float]:
    """One RL step (see the module docstring); returns its metrics."""
    sched, obj = inp.plan.schedule, inp.plan.objective
    n, bsz = sched.samples_per_prompt, sched.prompts_per_step
    t0 = time.perf_counter()

    # 1-2. prompts and responses
    idx = P.batch_indices(step - 1, bsz, len(inp.train_set), sched.seed, sched.shuffle)
    prompts = [inp.train_set.prompt_ids[i] for i in idx]
    gts = [inp.train_set.ground_truths[i] for i in idx for _ in range(n)]
    gen = roles.generate(prompts, n, inp.sampling, step_seed(sched.seed, step))
    inp.order.after_generation(roles)  # the generator asleep before any trainer pass (colocated)
    t_gen = time.perf_counter()

    # 3. reward
    graded = roles.grade(gen.texts, gts)
    rewards = torch.tensor(graded["reward"], dtype=torch.float32)
    if not bool(torch.isfinite(rewards).all()):
        raise NonFiniteRewardError(f"step {step}: {int((~torch.isfinite(rewards)).sum())} of {len(rewards)} rewards are "
                                   "not finite (nan or inf); nothing of this step was trained. Check the reward.* values")
    R.save_step(inp.writer, step, inp.train_set, idx, gen, graded, gts, n)
    t_reward = time.perf_counter()

    # 4. log-probs: the policy before the update (needed unless the update is on-policy: one optimizer
    # step, whose forward pass *is* the old policy's; the trainer then reports the rollout/* gap), the reference
    batch = pack_groups(prompts, gen.response_ids, n, inp.pad_id)
    mask = batch["response_mask"]
    m: dict[str, float] = {}
    if gen.log_probs is not None:
        batch["rollout_log_probs"] = rollout_log_probs_tensor(gen.log_probs, mask)
    if not sched.on_policy:  # more than one optimizer step per batch
        batch["old_log_probs"] = roles.log_probs(batch)
        if gen.log_probs is not None:
            m.update({f"rollout/{k}": v for k, v in
                      mismatch_metrics(batch["old_log_probs"], batch["rollout_log_probs"], mask).items()})
    if sched.reference:
        batch["ref_log_probs"] = roles.reference_log_probs(batch)

    # 5. advantages
    if obj.advantage == "gae":
        values = roles.values(batch)
        last_tok = (mask.sum(1).long() - 1).clamp(min=0)
        token_rewards = torch.zeros_like(mask)
        token_rewards[torch.arange(len(rewards)), last_tok] = rewards
        adv, returns = gae(token_rewards, values, mask, obj.gamma, obj.lam)
        batch.update(advantages=whiten(adv, mask), returns=returns, old_values=values)
    else:
        seq_adv = group_advantages(rewards, n, obj.norm_eps, scale_by_std=obj.advantage == "grpo")
        batch["advantages"] = broadcast_to_tokens(seq_adv, mask)
    t_prep = time.perf_counter()

    # 6-7. update, then the new weights into the generator
    inp.order.before_update(roles)
    m.update(roles.update(batch))
    inp.order.after_update(roles)
    t_train = time.perf_counter()

    # 8. metrics
    m.update(rollout_metrics(rewards, graded["correct"], mask.sum(1), gen.finish_reasons, n))
    m["reward/boxed_ratio"] = float(np.mean(graded["boxed"]))
    m.update({f"behaviour/{k}": v for k, v in behaviour_ratios(gen.texts, gen.response_ids).items()})
    m["reward/timeouts"] = float(sum(s == "timeout" for s in graded["status"]))
    m["data/epoch"] = (step * bsz) / len(inp.train_set)
    step_s = t_train - t0
    m.update({"time/step_s": step_s, "time/generate_s": t_gen - t0, "time/reward_s": t_reward - t_gen,
              "time/log_probs_s": t_prep - t_reward, "time/train_s": t_train - t_prep,
              "perf/tokens_per_s": float(batch["attention_mask"].sum()) / max(step_s, 1e-9),
              "perf/response_tokens_per_s": float(mask.sum()) / max(step_s, 1e-9)})
    return m


def parity_gate(roles: Roles, inp: StepInputs, log: Callable[[str], None]) -> dict[str, float]:
    """Step 0, before any update: sample one batch with log-probs and compare them with the trainer's
    on the same tokens. Raises `ParityError` when ``rollout/token_mult_prob_error`` exceeds
    ``rollout.parity_threshold``. The trainer's pass runs with the generator asleep, as every step's
    does (`engine.runtime.sync`); the generator is woken (and its weights re-synced) afterwards."""
    sched = inp.plan.schedule
    idx = P.batch_indices(0, sched.prompts_per_step, len(inp.train_set), sched.seed, sched.shuffle)
    prompts = [inp.train_set.prompt_ids[i] for i in idx]
    gen = roles.generate(prompts, sched.samples_per_prompt, inp.sampling, step_seed(sched.seed, 0, "parity"))
    inp.order.after_generation(roles)
    batch = pack_groups(prompts, gen.response_ids, sched.samples_per_prompt, inp.pad_id)
    mm = mismatch_metrics(roles.log_probs(batch), rollout_log_probs_tensor(gen.log_probs, batch["response_mask"]),
                          batch["response_mask"])
    inp.order.after_update(roles)  # the generator back awake with the (unchanged) weights
    err, limit = mm["token_mult_prob_error"], sched.parity_threshold
    log(f"parity gate: token_mult_prob_error {err:.5f} (threshold {limit}), trainer-vs-rollout kl {mm['kl']:.2e}")
    if not err <= limit:  # NaN too: a generator sampling from unset weights gives NaN log-probs
        raise ParityError(
            f"step-0 parity gate: the generator's log-probs disagree with the trainer's on the same tokens "
            f"(token_mult_prob_error {err:.4f} > rollout.parity_threshold {limit}; largest gap {mm['max_abs_diff']:.3f} "
            f"nats). The generator's weights do not match the trainer's: a weight-sync or conversion bug. "
            f"Nothing was trained.")
    return {f"rollout/{k}": v for k, v in mm.items()}


@dataclass
class RunInputs:
    """What a run reads besides the plan: the model's files and tokenizer, and its prompt sets."""

    files: Any  # engine.model_files.ModelFiles
    train_set: P.PromptSet
    val_set: Optional[P.PromptSet]
    bench_sets: dict[str, P.PromptSet]


def load_run_inputs(plan: Plan, log: Callable[[str], None]) -> RunInputs:
    """The plan's base model (built and cached if need be), its training and validation prompts, and the
    benchmarks, each data set counted and reported (bad rows are never dropped silently)."""
    spec = plan.spec
    files = resolve_model_files(plan, log)
    train_set = load_prompts(spec.data.train, spec, files.tokenizer, "train", log)
    val_set = load_prompts(spec.data.val, spec, files.tokenizer, "val", log) if spec.data.val else None
    bench_sets = load_benchmarks(spec, files.tokenizer, log) if plan.evaluation.every else {}
    if len(train_set) == 0:
        raise ValueError(f"no usable training prompts in {spec.data.train}: {train_set.report}")
    return RunInputs(files, train_set, val_set, bench_sets)


@dataclass
class Harness:
    """How a rehearsal (`engine.rehearse`) drives this loop on a plan without its hardware: its own
    inputs, stand-in settings handed to every worker, where the workers start, and the last step
    treated as a checkpoint, evaluation and export step so a short rehearsal exercises them."""

    inputs: RunInputs
    rehearsal: Any
    spawner: Any = None  # engine.runtime.roles.Spawner
    finish_at_stop: bool = True


@run_folder.guarded  # lock the folder, never overwrite a run in it, check the free space
def train(plan: Plan, run_dir: str | Path, resume: bool = False, log: Optional[Callable[[str], None]] = None,
          progress_stream=None, stop_after: Optional[int] = None, sync_skip: tuple[str, ...] = (),
          from_previous: bool = False, preflight: bool = True, harness: Optional[Harness] = None) -> dict[str, Any]:
    """Execute ``plan`` in ``run_dir``; returns the summary (also written to ``summary.json``).

    resume: continue from the latest complete checkpoint in ``run_dir`` (verified first);
    from_previous: from the one before it (a corrupt latest checkpoint). stop_after: end after this
    step number (for tests; the run stays resumable). sync_skip: weight names the first sync leaves out
    (tests of the parity gate only). preflight: check hardware and backends here (False when the
    caller, e.g. ``engine run``, already did). harness: a rehearsal's inputs and stand-ins.
    """
    t_start = time.perf_counter()
    if preflight and harness is None:
        check_resources(plan)  # before anything is loaded
    spec, sched = plan.spec, plan.schedule
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    progress = Progress(sched.total_steps, stream=progress_stream)
    log = log or progress.message
    threads = apply_threads(spec.cluster.cpu_threads)  # auto: from affinity and load
    torch.manual_seed(sched.seed)
    random.seed(sched.seed)
    np.random.seed(sched.seed % 2**32)

    run_info_path = run_dir / "run.json"
    run_info = json.loads(run_info_path.read_text()) if run_info_path.exists() else {}
    if not (run_dir / "plan.json").exists():
        write_text_atomic(run_dir / "plan.json", plan.to_json())  # a crash here must not leave a half plan
    if resume:  # refuse a changed experiment, stop at a finished run, say what is redone
        from engine.runtime.resume import check_resume

        resume_from = C.resume_step(run_dir / "checkpoints", previous=from_previous, log=log)  # verified
        finished = check_resume(plan, run_dir, log, checkpoint_step=resume_from)
        if finished is not None:
            return finished

    # -- model, data, roles ----------------------------------------------------------------------------
    data = harness.inputs if harness else load_run_inputs(plan, log)
    files, train_set, val_set, bench_sets = data.files, data.train_set, data.val_set, data.bench_sets
    gate = sched.parity_gate or bool(sync_skip)
    # the generator's log-probs every step (one value per sampled token): each step logs the rollout/*
    # trainer-vs-generator gap, with any generator, and TIS has its denominators
    inp = StepInputs(plan, train_set, sampling_params(plan.sampling, files.end_token_ids, logprobs=True),
                     files.tokenizer.pad_token_id, StepOrder(plan))
    roles = Roles(plan, files, threads=threads, order=inp.order, run_dir=str(run_dir),
                  rehearsal=harness.rehearsal if harness else None, spawner=harness.spawner if harness else None)
    tracker = None
    try:
        # the generator's first weights come from the trainer, in the colocated order (``sync_skip``: a
        # deliberately broken sync, for the parity gate's own test)
        inp.order.after_update(roles, skip=sync_skip)
        if sched.min_pass_rate is not None or sched.max_pass_rate is not None:
            inp.train_set = train_set = select_by_pass_rate(train_set, roles, sched, inp.sampling,
                                                            run_dir / "pass_rates.json", log)
            if len(train_set) == 0:
                raise ValueError("pass-rate selection left no training prompts")
        run_info.update(model_path=files.model_path, tokenizer_path=files.tokenizer_path,
                        end_token_ids=list(files.end_token_ids), data_train=train_set.report,
                        data_val=val_set.report if val_set else None,
                        data_eval={name: ps.report for name, ps in bench_sets.items()}, plan_hash=plan.hash)

        # -- resume --------------------------------------------------------------------------------
        ckpt_root = run_dir / "checkpoints"
        start = _resume_point(roles, inp, ckpt_root, resume_from if resume else None, resume, run_dir, log)

        if spec.tracking.backend == "aim":
            tracker = AimTracker(run_dir, spec.tracking.experiment,
                                 {"spec": spec.model_dump(mode="json"), "plan": json.loads(plan.to_json())},
                                 run_hash=run_info.get("aim_run_hash") if resume else None)
            run_info["aim_run_hash"] = tracker.hash
        _write_json(run_info_path, run_info)
        metrics_log = MetricsLog(run_dir / "metrics.jsonl", resume_step=start)
        inp.writer = R.open_writer(run_dir, spec.tracking, resume_step=start if resume else None)
        progress = Progress(sched.total_steps, start, stream=progress_stream)

        def record(step: int, m: dict[str, float]) -> None:
            metrics_log.write(step, m)
            if tracker is not None:
                tracker.track(step, m)
            history.append({"step": step, **m})

        total = sched.total_steps
        last = min(total, stop_after) if stop_after else total
        final_step = last if harness and harness.finish_at_stop else total
        history: list[dict[str, float]] = [r for r in metrics_log.read()]
        ev = plan.evaluation
        eval_sampling = sampling_params(ev.sampling, files.end_token_ids)
        base_sampling = sampling_params(ev.base_sampling, files.end_token_ids)
        m0: dict[str, float] = {}
        if start == 0 and not any(h.get("step") == 0 for h in history):
            if gate:  # a mis-synced or mis-converted generator never trains
                m0.update(parity_gate(roles, inp, log))
            if ev.every and ev.before_training:  # the base model (greedy by default, as the recipe evaluates it)
                m0.update(evaluate_all(roles, val_set, bench_sets, plan, base_sampling, 0, log, writer=inp.writer))
            if m0:
                record(0, m0)

        for step in range(start + 1, last + 1):
            m = rl_step(roles, inp, step)
            if ev.every and (step % ev.every == 0 or step == final_step):
                m.update(evaluate_all(roles, val_set, bench_sets, plan, eval_sampling, step, log, writer=inp.writer))
            record(step, m)
            progress.update(step, m)
            if step % sched.checkpoint_every == 0 or step == final_step:
                C.save_checkpoint(ckpt_root, step, {"rng": C.rng_state()},
                                  {"plan_hash": plan.hash, "data_position": step * sched.prompts_per_step,
                                   "epoch": m["data/epoch"]},
                                  keep_last=sched.keep_checkpoints, plan_json=plan.to_json(),
                                  write=lambda folder: roles.save_trainer(str(folder / "trainer")))

        final_dir = None
        if last == final_step and sched.export_hf:
            inp.order.before_export(roles)
            final_dir = _export_final(roles, files, run_dir)
        summary = _summary(plan, run_dir, history, train_set, val_set, last, total, time.perf_counter() - t_start,
                           final_dir, roles.reward_stats())
        _write_json(run_dir / "summary.json", summary)
        return summary
    finally:
        if tracker is not None:  # aim: closed on success, error and Ctrl-C, so a resume finds no lock
            tracker.close()
        roles.shutdown()


def _resume_point(roles: Roles, inp: StepInputs, ckpt_root: Path, resume_from: Optional[int], resume: bool,
                  run_dir: Path, log: Callable[[str], None]) -> int:
    """The step a run continues after: checkpoint ``resume_from`` (already verified; loaded into the
    trainer and synced into the generator) when resuming, else 0 (refusing a folder that already has
    checkpoints)."""
    if not resume:
        if C.list_checkpoints(ckpt_root):
            raise FileExistsError(f"{run_dir} already has checkpoints; continue it with `engine run {run_dir} --resume`")
        return 0
    loaded = C.load_checkpoint(ckpt_root, resume_from, verify=False) if resume_from is not None else None
    if loaded is None:
        log("no checkpoint found: starting from step 0")
        return 0
    state, meta = loaded
    start = int(meta["step"])
    roles.load_trainer(str(ckpt_root / f"step_{start:06d}" / "trainer"))
    inp.order.after_update(roles)  # the checkpoint's weights into the generator
    C.set_rng_state(state["rng"])
    log(f"resumed from {ckpt_root / f'step_{start:06d}'} (step {start})")
    return start


def _export_final(roles: Roles, files: Any, run_dir: Path) -> Path:
    """The trained policy as a HF folder ``run_dir/final`` (written aside, then renamed into place)."""
    final_dir = run_dir / "final"
    tmp = run_dir / f".final.tmp-{os.getpid()}"
    roles.export_hf(str(tmp))
    files.tokenizer.save_pretrained(str(tmp))
    if final_dir.exists():
        shutil.rmtree(final_dir)
    os.replace(tmp, final_dir)
    return final_dir


def _summary(plan, run_dir, history, train_set, val_set, last, total, wall_s, final_dir, reward_stats) -> dict[str, Any]:
    rewards = [h["reward/mean"] for h in history if "reward/mean" in h]
    acc = [h["reward/accuracy"] for h in history if "reward/accuracy" in h]
    tail = max(1, min(5, len(rewards)))
    vals = [h for h in history if "val/accuracy" in h]
    evals = [h for h in history if "eval/average" in h]
    step_times = [h["time/step_s"] for h in history if "time/step_s" in h]
    parity = next((h["rollout/token_mult_prob_error"] for h in history
                   if h.get("step") == 0 and "rollout/token_mult_prob_error" in h), None)
    return {
        "name": plan.spec.name, "plan_hash": plan.hash, "run_dir": str(run_dir),
        "steps_done": last, "total_steps": total, "complete": last >= total,
        "wall_time_s": round(wall_s, 2),
        "mean_step_time_s": float(np.mean(step_times)) if step_times else None,
        "reward_first": rewards[0] if rewards else None,
        "reward_last": rewards[-1] if rewards else None,
        f"reward_last{tail}_mean": float(np.mean(rewards[-tail:])) if rewards else None,
        "accuracy_first": acc[0] if acc else None, "accuracy_last": acc[-1] if acc else None,
        "val_accuracy_last": vals[-1]["val/accuracy"] if vals else None,
        "eval_last": {k: v for k, v in evals[-1].items() if k.startswith("eval/")} if evals else None,
        "first_step_reward_at_least_0.8": next((h["step"] for h in history if h.get("reward/mean", 0) >= 0.8), None),
        "step0_token_mult_prob_error": parity,
        "data_train": train_set.report, "data_val": val_set.report if val_set else None,
        "reward_stats": reward_stats,
        "final_model": str(final_dir) if final_dir else None,
    }
