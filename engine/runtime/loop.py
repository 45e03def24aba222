"""The zero-RL training loop: execute a `Plan` in a run folder.

One RL step (GRPO by default):

1. take the step's prompts (a pure function of seed and step, so a resume draws the same ones);
2. sample ``rollout.n`` responses per prompt with the generator;
3. grade them with the reward workers;
4. old log-probs (policy before the update), reference log-probs (KL), critic values (gae);
5. advantages: group-normalised rewards (grpo / dr_grpo) or GAE;
6. the trainer's PPO-clip update (mini-batches, micro-batches, grad clip, AdamW);
7. push the new weights to the generator (a no-op when they share one module);
8. log metrics (metrics.jsonl, aim, progress line); checkpoint every ``checkpoint.every`` steps.

Run folder: ``plan.json``, ``run.json`` (aim hash, base model, data report), ``metrics.jsonl``,
``.aim/``, ``checkpoints/step_NNNNNN/``, ``final/`` (HF export) and ``summary.json``.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

from engine.algorithm.advantages import broadcast_to_tokens, gae, group_advantages, whiten
from engine.backends.base import SamplingParams
from engine.data import prompts as P
from engine.evaluation.behaviour import behaviour_ratios
from engine.evaluation.benchmarks import benchmark_rows
from engine.evaluation.metrics import summarize
from engine.runtime import checkpoint as C
from engine.runtime.batch import pack_groups
from engine.runtime.group import LocalHandle, init_ray, spawn, uses_ray
from engine.runtime.resources import check_resources
from engine.runtime.threads import apply_threads
from engine.runtime.tracking import AimTracker, MetricsLog, Progress
from engine.runtime.workers import ActorWorker, ReferenceWorker, RewardWorker, RolloutWorker, WorkerSetup

#: Metrics that measure time or throughput (they differ between otherwise identical runs).
TIMING_KEYS = ("time/", "perf/")


def step_seed(seed: int, step: int, purpose: str = "rollout") -> int:
    """A 63-bit seed for ``(seed, step, purpose)``; independent of any global RNG state."""
    h = hashlib.sha256(f"{seed}:{step}:{purpose}".encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


def _write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (a temporary file, then `os.replace`)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _write_json(path: Path, data: Any) -> None:
    _write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str))


class Workers:
    """The four roles, each a local object or a Ray actor."""

    def __init__(self, plan: Any, setup: WorkerSetup, end_token_strings: tuple[str, ...], training: bool = True) -> None:
        """training=False starts only the generator and the reward pool (evaluation)."""
        self.remote = uses_ray(plan)
        if self.remote:
            init_ray(plan.spec.cluster.ray_address)
        self.actor = spawn(ActorWorker, (setup,), plan=plan, role="trainer", remote=self.remote) if training else None
        shared = None if self.remote or self.actor is None else self.actor.obj.model
        self.shared_weights = shared is not None
        self.rollout = (LocalHandle(RolloutWorker(setup, shared)) if not self.remote
                        else spawn(RolloutWorker, (setup,), plan=plan, role="generator", remote=True))
        self.reference = (spawn(ReferenceWorker, (setup,), plan=plan, role="reference", remote=self.remote)
                          if training and plan.spec.algorithm.kl_coef > 0 else None)
        self.reward = spawn(RewardWorker, (setup, end_token_strings), plan=plan, role="reward", remote=self.remote)

    def sync_weights(self) -> None:
        """Trainer -> generator weight sync (skipped when both use one module in this process)."""
        if not self.shared_weights:
            self.rollout.call("load_weights", self.actor.call("weights"))

    def shutdown(self) -> None:
        for h in (self.reward, self.reference, self.rollout, self.actor):
            if h is not None:
                try:
                    h.shutdown()
                except Exception:
                    pass


def _sampling(spec: Any, end_ids: tuple[int, ...], evaluation: bool = False, base: bool = False) -> SamplingParams:
    """Rollout sampling, or evaluation sampling (``base``: the step-0 evaluation of the base model)."""
    stops = tuple(dict.fromkeys(list(spec.model.stop) + list(spec.rollout.stop)))
    if evaluation:
        e = spec.evaluation
        temperature = e.base_temperature if base else e.temperature
        return SamplingParams(min(e.max_response_length, spec.data.max_response_length), temperature, e.top_p,
                              -1, stops, end_ids)
    r = spec.rollout
    return SamplingParams(spec.data.max_response_length, r.temperature, r.top_p, r.top_k, stops, end_ids)


def _grade(workers: Workers, texts: list[str], gts: list[str]) -> dict[str, list]:
    return workers.reward.call("grade", texts, gts)


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


def select_by_pass_rate(data: P.PromptSet, workers: Workers, spec: Any, sampling: SamplingParams,
                        cache: Path, log: Callable[[str], None]) -> P.PromptSet:
    """Keep prompts whose measured pass rate (base policy, ``rollout.n`` samples) is within
    ``[data.min_pass_rate, data.max_pass_rate]``. Rates are cached in the run folder."""
    d = spec.data
    n = spec.rollout.n
    if cache.exists():
        rates = json.loads(cache.read_text())["rates"]
    else:
        rates = []
        bs = max(1, d.train_batch_size)
        for s in range(0, len(data), bs):
            ids = data.prompt_ids[s:s + bs]
            gen = workers.rollout.call("generate", ids, n, sampling, step_seed(spec.seed, s, "pass_rate"))
            gts = [g for g in data.ground_truths[s:s + bs] for _ in range(n)]
            ok = _grade(workers, gen.texts, gts)["correct"]
            rates.extend(float(np.mean(ok[i * n:(i + 1) * n])) for i in range(len(ids)))
        _write_json(cache, {"n": n, "rates": rates})
    lo = d.min_pass_rate if d.min_pass_rate is not None else 0.0
    hi = d.max_pass_rate if d.max_pass_rate is not None else 1.0
    keep = [i for i, r in enumerate(rates) if lo <= r <= hi]
    out = data.subset(keep)
    out.report.update(pass_rate_selected=len(keep), pass_rate_dropped=len(data) - len(keep),
                      pass_rate_range=[lo, hi], pass_rate_mean=float(np.mean(rates)) if rates else 0.0)
    log(f"data: pass-rate selection kept {len(keep)}/{len(data)} prompts with rate in [{lo}, {hi}]")
    return out


def load_prompts(path: str, spec: Any, tokenizer: Any, which: str, log: Callable[[str], None]) -> P.PromptSet:
    """Read, select and tokenize ``path`` ('synthetic' generates the built-in arithmetic rows)."""
    d = spec.data
    if path == "synthetic":
        from engine.data.synthetic import generate_rows

        size = d.synthetic.size if which == "train" else d.synthetic.val_size
        rows = generate_rows(size, list(d.synthetic.levels), seed=spec.seed + (0 if which == "train" else 1))
    else:
        rows = P.read_rows(path)
    template = P.template_text(d.prompt_template, d.custom_template)
    ps = P.build_prompt_set(rows, tokenizer, template, d.max_prompt_length, d.prompt_key, d.levels)
    r = ps.report
    log(f"data ({which}): {r['kept']}/{r['rows']} prompts kept; {r['bad_rows']} bad rows"
        + (f" {r['bad_row_reasons']}" if r['bad_rows'] else "")
        + f", {r['outside_levels']} outside levels, {r['too_long']} over {d.max_prompt_length} tokens"
        + f" (longest {r['longest_prompt_tokens']})")
    return ps


def evaluate(workers: Workers, data: P.PromptSet, spec: Any, sampling: SamplingParams, step: int,
             prefix: str = "val", samples: Optional[int] = None) -> dict[str, float]:
    """Sample ``samples`` (default ``evaluation.samples``) responses per prompt of ``data``, in
    batches of ``evaluation.batch_size`` prompts, and grade them.

    Returns ``<prefix>/accuracy`` (mean over every sample: pass@1, or avg@k), ``<prefix>/pass@k``
    for k = 2, 4, ... up to the samples (unbiased estimator), ``<prefix>/reward``,
    ``<prefix>/response_length`` (tokens; ``length_correct`` / ``length_wrong`` over the right and
    wrong answers), ``<prefix>/clip_ratio`` (share cut at the length limit), ``<prefix>/boxed_ratio``
    (share with a ``\\boxed{}`` answer), and ``reflection_ratio`` / ``repeat_ratio``
    (`engine.evaluation.behaviour`).
    """
    k = samples or spec.evaluation.samples
    correct: list[bool] = []
    rewards: list[float] = []
    boxed: list[bool] = []
    lengths: list[int] = []
    truncated: list[bool] = []
    behaviour: dict[str, float] = {}  # ratio sums weighted by batch size (responses are not kept)
    bs = spec.evaluation.batch_size
    for s in range(0, len(data), bs):
        gen = workers.rollout.call("generate", data.prompt_ids[s:s + bs], k, sampling,
                                   step_seed(spec.seed, step, f"{prefix}{s}"))
        gts = [g for g in data.ground_truths[s:s + bs] for _ in range(k)]
        res = _grade(workers, gen.texts, gts)
        correct += res["correct"]
        rewards += res["reward"]
        boxed += res["boxed"]
        lengths += [len(r) for r in gen.response_ids]
        truncated += [f == "length" for f in gen.finish_reasons]
        for key, ratio in behaviour_ratios(gen.texts, gen.response_ids).items():
            behaviour[key] = behaviour.get(key, 0.0) + ratio * len(gen.texts)
    out = {f"{prefix}/{key}": value for key, value in summarize(correct, k).items()}
    out.update({f"{prefix}/reward": float(np.mean(rewards)), f"{prefix}/response_length": float(np.mean(lengths)),
                f"{prefix}/clip_ratio": float(np.mean(truncated)), f"{prefix}/boxed_ratio": float(np.mean(boxed))})
    for name, want in (("length_correct", True), ("length_wrong", False)):
        picked = [n for n, c in zip(lengths, correct) if bool(c) == want]
        if picked:
            out[f"{prefix}/{name}"] = float(np.mean(picked))
    out.update({f"{prefix}/{key}": total / max(1, len(correct)) for key, total in behaviour.items()})
    return out


def evaluate_benchmarks(workers: Workers, sets: dict[str, P.PromptSet], spec: Any, sampling: SamplingParams,
                        step: int) -> dict[str, float]:
    """`evaluate` on each benchmark (``eval/<name>/...``) plus ``eval/average``: the mean accuracy
    over the benchmarks, the SimpleRL-Zoo headline number."""
    out: dict[str, float] = {}
    by_name = spec.evaluation.samples_by_benchmark
    for name, data in sets.items():
        if len(data):
            out.update(evaluate(workers, data, spec, sampling, step, prefix=f"eval/{name}", samples=by_name.get(name)))
    accs = [out[f"eval/{name}/accuracy"] for name in sets if f"eval/{name}/accuracy" in out]
    if accs:
        out["eval/average"] = float(np.mean(accs))
    return out


def evaluate_all(workers: Workers, val_set: Optional[P.PromptSet], bench_sets: dict[str, P.PromptSet], spec: Any,
                 sampling: SamplingParams, step: int, log: Callable[[str], None],
                 label: Optional[str] = None) -> dict[str, float]:
    """``val/*`` on ``data.val`` and ``eval/*`` on the benchmarks, with one log line of accuracies
    (headed ``eval step N``, or ``eval <label>``)."""
    m: dict[str, float] = {}
    if val_set is not None and len(val_set):
        m.update(evaluate(workers, val_set, spec, sampling, step, prefix="val"))
    m.update(evaluate_benchmarks(workers, bench_sets, spec, sampling, step))
    shown = [("val", m.get("val/accuracy"))] + [(b, m.get(f"eval/{b}/accuracy")) for b in bench_sets]
    shown += [("average", m.get("eval/average"))]
    if m:
        log(f"eval {label or f'step {step}'}: accuracy " + ", ".join(f"{k} {v:.3f}" for k, v in shown if v is not None))
    return m


def load_benchmarks(spec: Any, tokenizer: Any, log: Callable[[str], None], always: bool = False) -> dict[str, P.PromptSet]:
    """The prompt sets of ``evaluation.benchmarks`` (none when ``evaluation.every`` is 0, unless
    ``always``), with the training template and prompt-length limit; what is left out is counted in
    each report."""
    e, d = spec.evaluation, spec.data
    if not (e.every or always) or not e.benchmarks:
        return {}
    template = P.template_text(d.prompt_template, d.custom_template)
    sets = {}
    for name in e.benchmarks:
        ps = P.build_prompt_set(benchmark_rows(name, e.data_dir), tokenizer, template, d.max_prompt_length)
        r = ps.report
        log(f"eval ({name}): {r['kept']}/{r['rows']} prompts kept; {r['bad_rows']} bad rows, "
            f"{r['too_long']} over {d.max_prompt_length} tokens")
        sets[name] = ps
    return sets


def load_model_files(plan: Any, log: Callable[[str], None], model_path: Optional[str] = None):
    """(model folder, tokenizer folder, tokenizer, end-token ids, end-token strings) of the plan's
    base model (built and cached for a random/pretrained tiny model), or of the HF folder
    ``model_path`` (e.g. a run's ``final/``), whose own tokenizer is used."""
    from engine.backends.hf_generator import end_token_ids
    from engine.modeling import load_tokenizer
    from engine.quickstart.base_model import resolve_base_model

    if model_path is None:
        model_path, tok_path = resolve_base_model(plan.spec, plan.architecture, log=log)
    else:
        if not (Path(model_path) / "config.json").exists():
            raise FileNotFoundError(f"{model_path} is not a model folder (no config.json)")
        tok_path = model_path
    tokenizer = load_tokenizer(tok_path)
    from transformers import GenerationConfig

    try:
        gen_cfg = GenerationConfig.from_pretrained(model_path, local_files_only=True)
    except OSError:
        gen_cfg = None
    end_ids = end_token_ids(tokenizer, gen_cfg)
    end_strings = tuple(tokenizer.convert_ids_to_tokens(list(end_ids)))
    return model_path, tok_path, tokenizer, end_ids, end_strings


def evaluate_model(plan: Any, model_path: Optional[str] = None, log: Callable[[str], None] = print,
                   base: Optional[bool] = None) -> dict[str, Any]:
    """Evaluate one model on ``data.val`` and ``evaluation.benchmarks`` without training
    (`engine eval`): the plan's base model, or the HF folder ``model_path``.

    Sampling follows the spec's evaluation settings: ``base_temperature`` for the base model,
    ``temperature`` for another model (``base`` overrides which). Returns the metrics (``val/*``,
    ``eval/*``, as during training), the data reports and what was evaluated.
    """
    check_resources(plan, command="eval")
    spec = plan.spec
    from compiler.validate import missing_data_files

    missing = missing_data_files(spec, evaluation_only=True)  # every missing input at once, before loading
    if missing:
        raise FileNotFoundError("input files not found:" + "".join(f"\n  - {key}: {path}\n    hint: {hint}"
                                                                for key, path, hint in missing))
    threads = apply_threads(spec.cluster.cpu_threads)  # threads: auto from affinity and load
    torch.manual_seed(spec.seed)
    base = model_path is None if base is None else base
    model_path, tok_path, tokenizer, end_ids, end_strings = load_model_files(plan, log, model_path)
    val_set = load_prompts(spec.data.val, spec, tokenizer, "val", log) if spec.data.val else None
    bench_sets = load_benchmarks(spec, tokenizer, log, always=True)
    setup = WorkerSetup(plan.to_json(), model_path, tok_path,
                        device="cuda" if plan.accelerator == "gpu" else "cpu", threads=threads)
    workers = Workers(plan, setup, end_strings, training=False)
    t0 = time.perf_counter()
    try:
        sampling = _sampling(spec, end_ids, evaluation=True, base=base)
        metrics = evaluate_all(workers, val_set, bench_sets, spec, sampling, 0, log, label=Path(model_path).name)
    finally:
        workers.shutdown()
    return {"model_path": model_path, "plan_hash": plan.hash, "name": spec.name,
            "temperature": sampling.temperature, "top_p": sampling.top_p,
            "max_response_length": sampling.max_new_tokens, "wall_time_s": round(time.perf_counter() - t0, 2),
            "metrics": metrics, "data_val": val_set.report if val_set else None,
            "data_eval": {name: ps.report for name, ps in bench_sets.items()}}


def train(plan: Any, run_dir: str | Path, resume: bool = False, log: Optional[Callable[[str], None]] = None,
          progress_stream=None, stop_after: Optional[int] = None) -> dict[str, Any]:
    """Execute ``plan`` in ``run_dir``; returns the summary (also written to ``summary.json``).

    resume: continue from the latest complete checkpoint in ``run_dir``. stop_after: end after this
    step number (for tests; the run stays resumable).
    """
    t_start = time.perf_counter()
    check_resources(plan)  # before anything is loaded
    spec = plan.spec
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    progress = Progress(spec.trainer.total_steps, stream=progress_stream)
    log = log or progress.message
    threads = apply_threads(spec.cluster.cpu_threads)  # threads: auto from affinity and load
    torch.manual_seed(spec.seed)
    random.seed(spec.seed)
    np.random.seed(spec.seed % 2**32)

    run_info_path = run_dir / "run.json"
    run_info = json.loads(run_info_path.read_text()) if run_info_path.exists() else {}
    if not (run_dir / "plan.json").exists():
        _write_text(run_dir / "plan.json", plan.to_json())  # a crash here must not leave a half plan
    if resume:  # resume check: refuse a changed experiment, stop at a finished run, say what is redone
        from engine.runtime.resume import check_resume

        finished = check_resume(plan, run_dir, log)
        if finished is not None:
            return finished

    # -- model, tokenizer, data -------------------------------------------------------------------
    model_path, tok_path, tokenizer, end_ids, end_strings = load_model_files(plan, log)
    train_set = load_prompts(spec.data.train, spec, tokenizer, "train", log)
    val_set = load_prompts(spec.data.val, spec, tokenizer, "val", log) if spec.data.val else None
    bench_sets = load_benchmarks(spec, tokenizer, log)
    if len(train_set) == 0:
        raise ValueError(f"no usable training prompts in {spec.data.train}: {train_set.report}")

    setup = WorkerSetup(plan.to_json(), model_path, tok_path,
                        device="cuda" if plan.accelerator == "gpu" else "cpu", threads=threads)
    workers = Workers(plan, setup, end_strings)
    sampling = _sampling(spec, end_ids)
    tracker = None
    try:
        if spec.data.min_pass_rate is not None or spec.data.max_pass_rate is not None:
            train_set = select_by_pass_rate(train_set, workers, spec, sampling, run_dir / "pass_rates.json", log)
            if len(train_set) == 0:
                raise ValueError("pass-rate selection left no training prompts")
        run_info.update(model_path=model_path, tokenizer_path=tok_path, end_token_ids=list(end_ids),
                        data_train=train_set.report, data_val=val_set.report if val_set else None,
                        data_eval={name: ps.report for name, ps in bench_sets.items()}, plan_hash=plan.hash)

        # -- resume --------------------------------------------------------------------------------
        ckpt_root = run_dir / "checkpoints"
        start = 0
        if resume:
            C.clean_partial(ckpt_root)
            loaded = C.load_checkpoint(ckpt_root)
            if loaded is not None:
                state, meta = loaded
                workers.actor.call("load_state_dict", state["trainer"])
                workers.sync_weights()
                C.set_rng_state(state["rng"])
                start = int(meta["step"])
                log(f"resumed from {ckpt_root / f'step_{start:06d}'} (step {start})")
            else:
                log("no checkpoint found: starting from step 0")
        elif C.list_checkpoints(ckpt_root):
            raise FileExistsError(f"{run_dir} already has checkpoints; continue it with `engine run {run_dir} --resume`")

        if spec.tracking.backend == "aim":
            tracker = AimTracker(run_dir, spec.tracking.experiment,
                                 {"spec": spec.model_dump(mode="json"), "plan": json.loads(plan.to_json())},
                                 run_hash=run_info.get("aim_run_hash") if resume else None)
            run_info["aim_run_hash"] = tracker.hash
        _write_json(run_info_path, run_info)
        metrics_log = MetricsLog(run_dir / "metrics.jsonl", resume_step=start)
        progress = Progress(spec.trainer.total_steps, start, stream=progress_stream)

        n = spec.rollout.n
        a = spec.algorithm
        bsz = spec.data.train_batch_size
        total = spec.trainer.total_steps
        last = min(total, stop_after) if stop_after else total
        history: list[dict[str, float]] = [r for r in metrics_log.read()]
        eval_sampling = _sampling(spec, end_ids, evaluation=True)
        # one optimizer step per rollout batch: the pre-update policy is the policy being updated
        on_policy = a.ppo_mini_batch_size >= bsz and a.ppo_epochs == 1
        ev = spec.evaluation
        if ev.every and ev.before_training and start == 0 and not any(h.get("step") == 0 for h in history):
            # the base model, before any update (greedy by default, as the recipe evaluates base models)
            m0 = evaluate_all(workers, val_set, bench_sets, spec, _sampling(spec, end_ids, evaluation=True, base=True),
                              0, log)
            if m0:
                metrics_log.write(0, m0)
                if tracker is not None:
                    tracker.track(0, m0)
                history.append({"step": 0, **m0})
        for step in range(start + 1, last + 1):
            t0 = time.perf_counter()
            idx = P.batch_indices(step - 1, bsz, len(train_set), spec.seed, spec.data.shuffle)
            prompts = [train_set.prompt_ids[i] for i in idx]
            gts = [train_set.ground_truths[i] for i in idx for _ in range(n)]

            workers.rollout.call("wake")
            gen = workers.rollout.call("generate", prompts, n, sampling, step_seed(spec.seed, step))
            workers.rollout.call("sleep")
            t_gen = time.perf_counter()
            graded = _grade(workers, gen.texts, gts)
            rewards = torch.tensor(graded["reward"], dtype=torch.float32)
            t_reward = time.perf_counter()

            batch = pack_groups(prompts, gen.response_ids, n, tokenizer.pad_token_id)
            mask = batch["response_mask"]
            if not on_policy:  # on-policy: the trainer uses its own detached log-probs (ratio 1)
                batch["old_log_probs"] = workers.actor.call("compute_log_probs", batch)
            if workers.reference is not None:
                batch["ref_log_probs"] = workers.reference.call("compute_log_probs", batch)
            if a.advantage == "gae":
                values = workers.actor.call("compute_values", batch)
                last_tok = (mask.sum(1).long() - 1).clamp(min=0)
                token_rewards = torch.zeros_like(mask)
                token_rewards[torch.arange(len(rewards)), last_tok] = rewards
                adv, returns = gae(token_rewards, values, mask, a.gamma, a.lam)
                batch.update(advantages=whiten(adv, mask), returns=returns, old_values=values)
            else:
                seq_adv = group_advantages(rewards, n, a.norm_eps, scale_by_std=a.advantage == "grpo")
                batch["advantages"] = broadcast_to_tokens(seq_adv, mask)
            t_prep = time.perf_counter()
            train_metrics = workers.actor.call("update", batch)
            workers.sync_weights()
            t_train = time.perf_counter()

            m = rollout_metrics(rewards, graded["correct"], mask.sum(1), gen.finish_reasons, n)
            m.update(train_metrics)
            m["reward/boxed_ratio"] = float(np.mean(graded["boxed"]))
            m.update({f"behaviour/{k}": v for k, v in behaviour_ratios(gen.texts, gen.response_ids).items()})
            m["reward/timeouts"] = float(sum(s == "timeout" for s in graded["status"]))
            m["data/epoch"] = (step * bsz) / len(train_set)
            step_s = t_train - t0
            n_tokens = float(batch["attention_mask"].sum())
            m.update({"time/step_s": step_s, "time/generate_s": t_gen - t0, "time/reward_s": t_reward - t_gen,
                      "time/log_probs_s": t_prep - t_reward, "time/train_s": t_train - t_prep,
                      "perf/tokens_per_s": n_tokens / max(step_s, 1e-9),
                      "perf/response_tokens_per_s": float(mask.sum()) / max(step_s, 1e-9)})
            if spec.evaluation.every and (step % spec.evaluation.every == 0 or step == total):
                m.update(evaluate_all(workers, val_set, bench_sets, spec, eval_sampling, step, log))
            metrics_log.write(step, m)
            if tracker is not None:
                tracker.track(step, m)
            history.append({"step": step, **m})
            progress.update(step, m)

            if step % spec.checkpoint.every == 0 or step == total:
                state = {"trainer": workers.actor.call("state_dict"), "rng": C.rng_state()}
                C.save_checkpoint(ckpt_root, step, state,
                                  {"plan_hash": plan.hash, "data_position": step * bsz, "epoch": m["data/epoch"]},
                                  keep_last=spec.checkpoint.keep_last, plan_json=plan.to_json())

        final_dir = None
        if last == total and spec.checkpoint.export_hf:
            final_dir = run_dir / "final"
            tmp = run_dir / f".final.tmp-{os.getpid()}"
            workers.actor.call("export_hf", str(tmp))
            tokenizer.save_pretrained(str(tmp))
            if final_dir.exists():
                import shutil

                shutil.rmtree(final_dir)
            os.replace(tmp, final_dir)
        summary = _summary(plan, run_dir, history, train_set, val_set, last, total, time.perf_counter() - t_start,
                           final_dir, workers)
        _write_json(run_dir / "summary.json", summary)
        return summary
    finally:
        if tracker is not None:  # aim: closed on success, error and Ctrl-C, so a resume finds no lock
            tracker.close()
        workers.shutdown()


def _summary(plan, run_dir, history, train_set, val_set, last, total, wall_s, final_dir, workers) -> dict[str, Any]:
    rewards = [h["reward/mean"] for h in history if "reward/mean" in h]
    acc = [h["reward/accuracy"] for h in history if "reward/accuracy" in h]
    tail = max(1, min(5, len(rewards)))
    vals = [h for h in history if "val/accuracy" in h]
    evals = [h for h in history if "eval/average" in h]
    step_times = [h["time/step_s"] for h in history if "time/step_s" in h]
    try:
        reward_stats = workers.reward.call("stats")
    except Exception:
        reward_stats = {}
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
        "data_train": train_set.report, "data_val": val_set.report if val_set else None,
        "reward_stats": reward_stats,
        "final_model": str(final_dir) if final_dir else None,
    }
