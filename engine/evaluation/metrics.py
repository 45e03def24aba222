"""Evaluation metrics: the unbiased pass@k estimator and per-benchmark summaries."""

from __future__ import annotations

from typing import Sequence


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem from ``n`` samples of which ``c`` are correct.

    ``1 - C(n-c, k) / C(n, k)`` (Chen et al. 2021), computed as a product so large ``n`` does not
    overflow. Needs ``1 <= k <= n`` and ``0 <= c <= n``.
    """
    if not (1 <= k <= n) or not (0 <= c <= n):
        raise ValueError(f"pass@k needs 1 <= k <= n and 0 <= c <= n, got n={n} c={c} k={k}")
    if n - c < k:
        return 1.0
    miss = 1.0
    for i in range(n - c + 1, n + 1):
        miss *= 1.0 - k / i
    return 1.0 - miss


def ks_for(samples: int) -> list[int]:
    """The k reported for ``samples`` per problem: 1, 2, 4, ... up to ``samples``."""
    ks, k = [], 1
    while k <= samples:
        ks.append(k)
        k *= 2
    return ks


def summarize(correct: Sequence[bool], samples: int) -> dict[str, float]:
    """Accuracy (mean over every sample, i.e. avg@samples) and pass@k for k in `ks_for`.

    ``correct`` holds ``samples`` consecutive verdicts per problem.
    """
    if samples < 1 or len(correct) % samples:
        raise ValueError(f"{len(correct)} verdicts do not split into groups of {samples}")
    problems = len(correct) // samples
    out = {"accuracy": sum(map(bool, correct)) / len(correct) if correct else 0.0}
    if samples > 1 and problems:
        counts = [sum(map(bool, correct[i * samples:(i + 1) * samples])) for i in range(problems)]
        for k in ks_for(samples)[1:]:
            out[f"pass@{k}"] = sum(pass_at_k(samples, c, k) for c in counts) / problems
    return out
