"""Evaluation over a `Sampler` (a run's generator and reward): ``val/*`` on the validation set and
``eval/<benchmark>/*`` on the benchmarks. Used during training and by `engine eval`; it imports
nothing from the runtime (the runtime imports it)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Optional

import numpy as np

from engine.core.generation import SamplingParams
from engine.data import prompts as P
from engine.evaluation.behaviour import behaviour_ratios
from engine.evaluation.metrics import summarize
from engine.sampling import Sampler, step_seed
from engine.core.rollouts import EvalCollector

if TYPE_CHECKING:
    from compiler.plan import Plan


def evaluate(sampler: Sampler, data: P.PromptSet, plan: "Plan", sampling: SamplingParams, step: int,
             prefix: str = "val", samples: Optional[int] = None, writer: Optional[Any] = None) -> dict[str, float]:
    """Sample ``samples`` (default ``plan.evaluation.samples``) responses per prompt of ``data``, in
    batches of ``plan.evaluation.batch_size`` prompts, and grade them.

    Returns ``<prefix>/accuracy`` (mean over every sample: pass@1, or avg@k), ``<prefix>/pass@k``
    for k = 2, 4, ... up to the samples (unbiased estimator), ``<prefix>/reward``,
    ``<prefix>/response_length`` (tokens; ``length_correct`` / ``length_wrong`` over the right and
    wrong answers), ``<prefix>/clip_ratio`` (share cut at the length limit), ``<prefix>/boxed_ratio``
    (share with a ``\\boxed{}`` answer), and ``reflection_ratio`` / ``repeat_ratio``
    (`engine.evaluation.behaviour`). ``writer``: a `engine.core.rollouts.RolloutWriter` that saves
    every sample.
    """
    ev, seed = plan.evaluation, plan.schedule.seed
    k = samples or ev.samples
    correct: list[bool] = []
    rewards: list[float] = []
    boxed: list[bool] = []
    lengths: list[int] = []
    truncated: list[bool] = []
    behaviour: dict[str, float] = {}  # ratio sums weighted by batch size (responses are not kept)
    bs = ev.batch_size
    saved = EvalCollector() if writer is not None else None
    for s in range(0, len(data), bs):
        gen = sampler.generate(data.prompt_ids[s:s + bs], k, sampling, step_seed(seed, step, f"{prefix}{s}"))
        gts = [g for g in data.ground_truths[s:s + bs] for _ in range(k)]
        res = sampler.grade(gen.texts, gts)
        if saved is not None:
            saved.add(data.texts[s:s + bs], gen.texts, res, gts, gen.finish_reasons, [len(r) for r in gen.response_ids])
        correct += res["correct"]
        rewards += res["reward"]
        boxed += res["boxed"]
        lengths += [len(r) for r in gen.response_ids]
        truncated += [f == "length" for f in gen.finish_reasons]
        for key, ratio in behaviour_ratios(gen.texts, gen.response_ids).items():
            behaviour[key] = behaviour.get(key, 0.0) + ratio * len(gen.texts)
    if saved is not None:
        saved.write(writer, step, prefix, k)
    out = {f"{prefix}/{key}": value for key, value in summarize(correct, k).items()}
    out.update({f"{prefix}/reward": float(np.mean(rewards)), f"{prefix}/response_length": float(np.mean(lengths)),
                f"{prefix}/clip_ratio": float(np.mean(truncated)), f"{prefix}/boxed_ratio": float(np.mean(boxed))})
    for name, want in (("length_correct", True), ("length_wrong", False)):
        picked = [n for n, c in zip(lengths, correct) if bool(c) == want]
        if picked:
            out[f"{prefix}/{name}"] = float(np.mean(picked))
    out.update({f"{prefix}/{key}": total / max(1, len(correct)) for key, total in behaviour.items()})
    return out


def evaluate_benchmarks(sampler: Sampler, sets: dict[str, P.PromptSet], plan: "Plan", sampling: SamplingParams,
                        step: int, writer: Optional[Any] = None) -> dict[str, float]:
    """`evaluate` on each benchmark (``eval/<name>/...``) plus ``eval/average``: the mean accuracy
    over the benchmarks, the SimpleRL-Zoo headline number."""
    out: dict[str, float] = {}
    by_name = plan.evaluation.samples_by_benchmark
    for name, data in sets.items():
        if len(data):
            out.update(evaluate(sampler, data, plan, sampling, step, prefix=f"eval/{name}", samples=by_name.get(name),
                                writer=writer))
    accs = [out[f"eval/{name}/accuracy"] for name in sets if f"eval/{name}/accuracy" in out]
    if accs:
        out["eval/average"] = float(np.mean(accs))
    return out


def evaluate_all(sampler: Sampler, val_set: Optional[P.PromptSet], bench_sets: dict[str, P.PromptSet], plan: "Plan",
                 sampling: SamplingParams, step: int, log: Callable[[str], None],
                 label: Optional[str] = None, writer: Optional[Any] = None) -> dict[str, float]:
    """``val/*`` on ``data.val`` and ``eval/*`` on the benchmarks, with one log line of accuracies
    (headed ``eval step N``, or ``eval <label>``)."""
    m: dict[str, float] = {}
    if val_set is not None and len(val_set):
        m.update(evaluate(sampler, val_set, plan, sampling, step, prefix="val", writer=writer))
    m.update(evaluate_benchmarks(sampler, bench_sets, plan, sampling, step, writer=writer))
    shown = [("val", m.get("val/accuracy"))] + [(b, m.get(f"eval/{b}/accuracy")) for b in bench_sets]
    shown += [("average", m.get("eval/average"))]
    if m:
        log(f"eval {label or f'step {step}'}: accuracy " + ", ".join(f"{k} {v:.3f}" for k, v in shown if v is not None))
    return m
