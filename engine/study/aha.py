"""The "aha moment": the step at which a behaviour's ratio rises clearly above its starting level.

A single change-point in the mean of a per-step series ``x_1 .. x_T`` (e.g. the share of a step's
responses that verify), tested rather than thresholded:

* statistic: for every split ``tau`` (both sides at least ``min_segment`` steps) the two-sample
  t statistic of "after minus before", ``(mean_after - mean_before) / sqrt(s2 * (1/n_b + 1/n_a))``
  with the pooled within-segment variance ``s2``; the observed statistic is the largest one over
  the splits (one-sided: only rises count);
* significance: a permutation test. Under "no change" the steps are exchangeable, so the same
  maximum is computed on ``permutations`` seeded shuffles of the series; the p-value is
  ``(1 + #{shuffled >= observed}) / (1 + permutations)`` and the confidence ``1 - p``;
* decision: found when ``p <= alpha`` and the rise (``mean_after - mean_before``, in the series'
  units) is at least ``min_rise``; otherwise "not found", with the best split and its p-value
  still reported.

The change step is the first step of the "after" segment.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional, Sequence

import numpy as np


@dataclass
class ChangePoint:
    """The outcome of `detect_rise`. ``step``: the first step after the change (None if the series
    is too short); ``before`` / ``after``: the segment means; ``p_value`` and ``confidence`` of
    the permutation test; ``found``: significant and at least ``min_rise``."""

    found: bool
    step: Optional[int]
    index: Optional[int]
    before: Optional[float]
    after: Optional[float]
    rise: Optional[float]
    statistic: Optional[float]
    p_value: Optional[float]
    confidence: Optional[float]
    alpha: float
    min_rise: float
    permutations: int
    reason: str

    def to_dict(self) -> dict:
        return asdict(self)


def _split_stats(x: np.ndarray, min_segment: int) -> tuple[np.ndarray, np.ndarray]:
    """t statistics of every admissible split of each row of ``x`` (shape [R, T]) and the split
    positions (index of the first "after" element)."""
    R, T = x.shape
    taus = np.arange(min_segment, T - min_segment + 1)
    c1 = np.cumsum(x, axis=1)
    c2 = np.cumsum(x * x, axis=1)
    tot1, tot2 = c1[:, -1:], c2[:, -1:]
    nb = taus.astype(float)
    na = T - nb
    s1b, s2b = c1[:, taus - 1], c2[:, taus - 1]
    s1a, s2a = tot1 - s1b, tot2 - s2b
    mb, ma = s1b / nb, s1a / na
    ss = (s2b - nb * mb ** 2) + (s2a - na * ma ** 2)  # within-segment sums of squares
    s2 = np.maximum(ss / max(T - 2, 1), 1e-12)
    t = (ma - mb) / np.sqrt(s2 * (1 / nb + 1 / na))
    return t, taus


def detect_rise(values: Sequence[float], steps: Optional[Sequence[int]] = None, *, alpha: float = 0.01,
                min_rise: float = 0.05, permutations: int = 2000, min_segment: int = 3,
                seed: int = 0) -> ChangePoint:
    """Test ``values`` (one per step, ``steps`` their step numbers; default 1..T) for one rise in
    mean (see the module docstring)."""
    x = np.asarray(values, dtype=float)
    steps = list(steps) if steps is not None else list(range(1, len(x) + 1))
    if len(steps) != len(x):
        raise ValueError(f"{len(steps)} steps for {len(x)} values")
    T = len(x)
    base = dict(alpha=alpha, min_rise=min_rise, permutations=permutations)
    if T < 2 * min_segment:
        return ChangePoint(False, None, None, None, None, None, None, None, None, **base,
                           reason=f"not found: {T} steps, need at least {2 * min_segment}")
    if np.allclose(x, x[0]):
        return ChangePoint(False, None, None, float(x[0]), float(x[0]), 0.0, 0.0, 1.0, 0.0, **base,
                           reason="not found: the series is constant")
    t, taus = _split_stats(x[None, :], min_segment)
    best = int(np.argmax(t[0]))
    observed = float(t[0, best])
    tau = int(taus[best])
    before, after = float(x[:tau].mean()), float(x[tau:].mean())
    rng = np.random.default_rng(seed)
    null = np.empty(permutations)
    chunk = 500
    for s in range(0, permutations, chunk):
        m = min(chunk, permutations - s)
        shuffled = np.stack([rng.permutation(x) for _ in range(m)])
        null[s:s + m] = _split_stats(shuffled, min_segment)[0].max(axis=1)
    p = float((1 + np.sum(null >= observed - 1e-12)) / (1 + permutations))
    rise = after - before
    found = p <= alpha and rise >= min_rise
    if found:
        reason = (f"rise at step {steps[tau]}: {before:.3f} -> {after:.3f} (p = {p:.4f}, "
                  f"confidence {1 - p:.4f})")
    elif p > alpha:
        reason = f"not found: best split at step {steps[tau]} is not significant (p = {p:.4f} > {alpha})"
    else:
        reason = f"not found: significant split at step {steps[tau]} but the rise {rise:.3f} < {min_rise}"
    return ChangePoint(found, steps[tau], tau, before, after, rise, observed, p, 1 - p, **base, reason=reason)
