"""Built-in synthetic arithmetic problems with difficulty levels (no download needed).

Rows follow the verl layout the loaders read (``prompt`` as a chat list, ``reward_model.ground_truth``,
``data_source``, ``level``), so synthetic data goes through exactly the same path as a user's parquet.

Levels (1 = easiest):

1. ``a+b`` with one-digit operands;
2. ``a*b`` with one-digit operands;
3. ``a+b`` with a two-digit and a one-digit operand;
4. ``a+b`` with two-digit operands;
5. ``a*b`` with a two-digit and a one-digit operand.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

DATA_SOURCE = "synthetic/arithmetic"
LEVELS = (1, 2, 3, 4, 5)


@dataclass(frozen=True)
class Problem:
    """One arithmetic problem: ``a op b`` and its integer answer."""

    a: int
    op: str
    b: int
    level: int

    @property
    def answer(self) -> int:
        """The exact result."""
        if self.op == "+":
            return self.a + self.b
        if self.op == "-":
            return self.a - self.b
        return self.a * self.b

    @property
    def expression(self) -> str:
        """``a+b`` without spaces."""
        return f"{self.a}{self.op}{self.b}"

    @property
    def question(self) -> str:
        """The question text put into the prompt template."""
        return f"Compute {self.expression}."


def sample_problem(rng: random.Random, level: int) -> Problem:
    """Draw one problem of the given difficulty level (1-5)."""
    if level == 1:
        return Problem(rng.randint(0, 9), "+", rng.randint(0, 9), level)
    if level == 2:
        return Problem(rng.randint(0, 9), "*", rng.randint(0, 9), level)
    if level == 3:
        a, b = rng.randint(10, 99), rng.randint(0, 9)
        if rng.random() < 0.5:
            a, b = b, a
        return Problem(a, "+", b, level)
    if level == 4:
        return Problem(rng.randint(10, 99), "+", rng.randint(10, 99), level)
    if level == 5:
        return Problem(rng.randint(10, 99), "*", rng.randint(2, 9), level)
    raise ValueError(f"synthetic level must be one of {LEVELS}, got {level}")


def generate_rows(size: int, levels: list[int] | tuple[int, ...], seed: int) -> list[dict]:
    """``size`` verl-style rows, levels drawn uniformly from ``levels``, reproducible from ``seed``."""
    for level in levels:
        if level not in LEVELS:
            raise ValueError(f"synthetic level must be one of {LEVELS}, got {level}")
    rng = random.Random(seed)
    rows = []
    for i in range(size):
        p = sample_problem(rng, rng.choice(list(levels)))
        rows.append(
            {
                "prompt": [{"role": "user", "content": p.question}],
                "reward_model": {"style": "rule", "ground_truth": str(p.answer)},
                "data_source": DATA_SOURCE,
                "level": p.level,
                "extra_info": {"index": i, "expression": p.expression},
            }
        )
    return rows
