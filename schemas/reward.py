"""`reward:` rule-based answer reward and format modes."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveFloat

from schemas.common import Section


class RewardSpec(Section):
    """How a response is scored (see engine.reward)."""

    format: Literal["none", "strict", "independent"] = Field(
        "none",
        description="none: 1 correct / 0 wrong; strict: format_penalty when no \\boxed{}; "
        "independent: 1 correct+boxed, 0.5 correct unboxed, -0.5 wrong boxed, format_penalty neither.",
    )
    correct: float = Field(1.0, description="Reward of a correct answer.")
    wrong: float = Field(0.0, description="Reward of a wrong answer.")
    format_penalty: float = Field(-1.0, description="Reward when the format rule is broken (strict / independent).")
    timeout_s: PositiveFloat = Field(10.0, description="Hard time bound per verification (seconds); a timeout scores as wrong.")
    workers: int = Field(16, ge=0, description="Verification worker processes; 0 verifies in the calling process.")
