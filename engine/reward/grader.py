"""Batch grading: extraction and the fast path in the parent, symbolic checks in the pool."""

from __future__ import annotations

import threading
from collections import OrderedDict
from functools import lru_cache
from typing import Dict, List, Optional, Sequence, Tuple

from .config import GradeResult, RewardConfig, compute_reward
from .equivalence import gold_choice, is_equivalent, quick_verdict
from .extract import extract_answer_info, gold_answer

_VERDICT_CACHE_SIZE = 100_000


def _gold_text(gt) -> str:
    if gt is None:
        return ""
    if isinstance(gt, (list, tuple)):  # several acceptable forms written as a list: join as a list
        return ", ".join(str(x) for x in gt)
    return str(gt)


@lru_cache(maxsize=65_536)
def _gold_answer_info(text: str) -> Tuple[str, bool]:
    try:
        ans = gold_answer(text)
        return ans, gold_choice(ans) is not None
    except Exception:  # noqa: BLE001
        return text, False


def _gold_info(gt) -> Tuple[str, bool]:
    """(gold answer, is a multiple-choice letter), cached: golds repeat across rollouts."""
    return _gold_answer_info(_gold_text(gt))


class Grader:
    """Grades batches of responses; owns the verification pool. Reusable across training steps.

    Usage::

        with Grader(RewardConfig(workers=4)) as g:
            results = g.grade_batch(responses, ground_truths)
    """

    def __init__(self, config: RewardConfig = RewardConfig(), end_tokens: Sequence[str] = (),
                 assistant_marker: Optional[str] = None):
        self.config = config
        self.end_tokens = tuple(end_tokens)
        self.assistant_marker = assistant_marker
        self._pool = None
        self._lock = threading.Lock()
        self._cache: "OrderedDict[Tuple[str, str], Tuple[str, bool]]" = OrderedDict()  # (status, correct)
        self._stats: Dict[str, int] = {
            "total": 0, "correct": 0, "timeouts": 0, "errors": 0, "no_answer": 0,
            "fast_path": 0, "cached": 0, "symbolic": 0,
        }

    # context manager ---------------------------------------------------------------------------
    def __enter__(self) -> "Grader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):  # best effort; close() is the contract
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass

    def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()

    def stats(self) -> Dict[str, int]:
        """Counts since creation: total, correct, timeouts, errors, no_answer (+ path counters)."""
        return dict(self._stats)

    # grading ------------------------------------------------------------------------------------
    def _verify_symbolic(self, tasks: List[Tuple[str, str]]) -> List[Tuple[str, bool]]:
        if self.config.workers == 0:  # in-process, each item bounded by timeout_s (`deadline`)
            from .deadline import call_with_deadline

            out = []
            for pred, gold in tasks:
                try:
                    finished, ok = call_with_deadline(is_equivalent, (pred, gold), self.config.timeout_s)
                    out.append(("ok", bool(ok)) if finished else ("timeout", False))
                except Exception:  # noqa: BLE001 - a failure is this item's error
                    out.append(("error", False))
            return out
        if self._pool is None:
            from .pool import VerifierPool
            self._pool = VerifierPool(self.config.workers, self.config.timeout_s)
        return self._pool.verify(tasks)

    def grade_batch(self, responses: Sequence[str], ground_truths: Sequence[str]) -> List[GradeResult]:
        if len(responses) != len(ground_truths):
            raise ValueError(f"{len(responses)} responses but {len(ground_truths)} ground truths")
        with self._lock:
            return self._grade(responses, ground_truths)

    def _grade(self, responses, ground_truths) -> List[GradeResult]:
        n = len(responses)
        extracted: List[Optional[str]] = [None] * n
        boxed = [False] * n
        status: List[str] = ["ok"] * n
        correct = [False] * n
        pending: "OrderedDict[Tuple[str, str], List[int]]" = OrderedDict()
        st = self._stats
        for i in range(n):
            gold, choice = _gold_info(ground_truths[i])
            try:
                ans, bx = extract_answer_info(responses[i], self.end_tokens, self.assistant_marker,
                                              choice=choice)
            except Exception:  # noqa: BLE001
                ans, bx = None, False
            extracted[i], boxed[i] = ans, bx
            if ans is None:
                status[i] = "no_answer"
                continue
            key = (ans, gold)
            if key in self._cache:
                self._cache.move_to_end(key)
                status[i], correct[i] = self._cache[key]
                st["cached"] += 1
                continue
            try:
                q = quick_verdict(ans, gold)
            except Exception:  # noqa: BLE001
                q = None
            if q is not None:
                correct[i] = q
                st["fast_path"] += 1
                continue
            pending.setdefault(key, []).append(i)
        if pending:
            tasks = list(pending.keys())
            st["symbolic"] += len(tasks)
            verdicts = self._verify_symbolic(tasks)
            for key, (s, ok) in zip(tasks, verdicts):
                if s in ("ok", "timeout"):  # a timeout is a verdict too: the same answer is not tried again
                    self._cache[key] = (s, ok)
                    if len(self._cache) > _VERDICT_CACHE_SIZE:
                        self._cache.popitem(last=False)
                for i in pending[key]:
                    status[i] = s
                    correct[i] = ok and s == "ok"
        out = []
        for i in range(n):
            r = compute_reward(self.config, correct[i], boxed[i])
            out.append(GradeResult(extracted=extracted[i], boxed=boxed[i], correct=correct[i],
                                   reward=r, status=status[i]))
            st["total"] += 1
            st["correct"] += int(correct[i])
            st["timeouts"] += int(status[i] == "timeout")
            st["errors"] += int(status[i] == "error")
            st["no_answer"] += int(status[i] == "no_answer")
        return out


def grade(responses: Sequence[str], ground_truths: Sequence[str],
          config: RewardConfig = RewardConfig()) -> List[GradeResult]:
    """One-shot convenience: grade a batch with a temporary ``Grader``."""
    with Grader(config) as g:
        return g.grade_batch(responses, ground_truths)
