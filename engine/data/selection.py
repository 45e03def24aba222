"""Pass-rate selection: keep the prompts the base policy solves at a rate inside a range."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from engine.core.atomic import write_json_atomic
from engine.core.generation import SamplingParams
from engine.data import prompts as P
from engine.sampling import Sampler, step_seed

if TYPE_CHECKING:
    from compiler.plan import SchedulePlan


def select_by_pass_rate(data: P.PromptSet, sampler: Sampler, schedule: "SchedulePlan", sampling: SamplingParams,
                        cache: Path, log: Callable[[str], None]) -> P.PromptSet:
    """Keep prompts whose measured pass rate (base policy, ``samples_per_prompt`` samples, in batches
    of ``prompts_per_step``) is within ``[min_pass_rate, max_pass_rate]`` of the plan's ``schedule``.
    Rates are cached in ``cache`` (the run folder)."""
    d = schedule
    n = d.samples_per_prompt
    if cache.exists():
        rates = json.loads(cache.read_text())["rates"]
    else:
        rates = []
        bs = max(1, d.prompts_per_step)
        for s in range(0, len(data), bs):
            ids = data.prompt_ids[s:s + bs]
            gen = sampler.generate(ids, n, sampling, step_seed(d.seed, s, "pass_rate"))
            gts = [g for g in data.ground_truths[s:s + bs] for _ in range(n)]
            ok = sampler.grade(gen.texts, gts)["correct"]
            rates.extend(float(np.mean(ok[i * n:(i + 1) * n])) for i in range(len(ids)))
        write_json_atomic(cache, {"n": n, "rates": rates})
    lo = d.min_pass_rate if d.min_pass_rate is not None else 0.0
    hi = d.max_pass_rate if d.max_pass_rate is not None else 1.0
    keep = [i for i, r in enumerate(rates) if lo <= r <= hi]
    out = data.subset(keep)
    out.report.update(pass_rate_selected=len(keep), pass_rate_dropped=len(data) - len(keep),
                      pass_rate_range=[lo, hi], pass_rate_mean=float(np.mean(rates)) if rates else 0.0)
    log(f"data: pass-rate selection kept {len(keep)}/{len(data)} prompts with rate in [{lo}, {hi}]")
    return out
