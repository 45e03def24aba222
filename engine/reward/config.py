"""Configuration and result types of the rule-based math reward."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Optional

FormatMode = Literal["none", "strict", "independent"]
Status = Literal["ok", "timeout", "error", "no_answer"]

_FORMATS = ("none", "strict", "independent")


@dataclass(frozen=True)
class RewardConfig:
    """How answers are scored.

    format:
        ``none``        correct -> ``correct``, otherwise ``wrong`` (the paper's default).
        ``strict``      no ``\\boxed{}`` answer -> ``format_penalty``, else as ``none``.
        ``independent`` correct & boxed 1.0; correct, unboxed 0.5; wrong, boxed -0.5;
                        neither -> ``format_penalty``.
    timeout_s: hard wall-clock limit of one symbolic verification (seconds); a timeout is wrong.
    workers: most verification processes; the pool is capped at the CPUs this process may use and
        starts a worker only when items need the symbolic stage (one per 128 queued items).
        0 verifies in-process (size bounds only).
    """

    format: FormatMode = "none"
    timeout_s: float = 10.0
    workers: int = 16
    correct: float = 1.0
    wrong: float = 0.0
    format_penalty: float = -1.0

    def __post_init__(self) -> None:
        if self.format not in _FORMATS:
            raise ValueError(f"reward.format must be one of {_FORMATS}, got {self.format!r}")
        if not (0 < self.timeout_s < math.inf):
            raise ValueError(f"reward.timeout_s must be a finite number > 0, got {self.timeout_s!r}")
        for name in ("correct", "wrong", "format_penalty"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"reward.{name} must be a finite number, got {getattr(self, name)!r}")
        if not isinstance(self.workers, int) or self.workers < 0:
            raise ValueError(f"reward.workers must be an integer >= 0, got {self.workers!r}")


@dataclass
class GradeResult:
    """The verdict on one response."""

    extracted: Optional[str]
    boxed: bool
    correct: bool
    reward: float
    status: Status

    def to_dict(self) -> dict:
        return {
            "extracted": self.extracted,
            "boxed": self.boxed,
            "correct": self.correct,
            "reward": self.reward,
            "status": self.status,
        }


def compute_reward(config: RewardConfig, correct: bool, boxed: bool) -> float:
    """The scalar reward of one response under ``config.format``."""
    if config.format == "none":
        return config.correct if correct else config.wrong
    if config.format == "strict":
        if not boxed:
            return config.format_penalty
        return config.correct if correct else config.wrong
    # independent (SimpleRL-Zoo code's mode)
    if correct and boxed:
        return 1.0
    if correct:
        return 0.5
    if boxed:
        return -0.5
    return config.format_penalty
