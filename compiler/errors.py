"""Spec problems: every problem at once, each with field path, YAML file and line, and a hint."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a spec.

    path: dotted field path (``trainer.tensor_parallel``); message: what is wrong; hint: what would fix
    it; file/line: where the value was written (filled in by the loader when known).
    """

    path: str
    message: str
    hint: str = ""
    file: Optional[str] = None
    line: Optional[int] = None

    def located(self, file: Optional[str], line: Optional[int]) -> "Problem":
        """Copy with a source location."""
        return Problem(self.path, self.message, self.hint, file, line)

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.file and self.line else (self.file or "<spec>")
        text = f"{where}: {self.path}: {self.message}"
        return f"{text}\n    hint: {self.hint}" if self.hint else text


class SpecError(Exception):
    """A spec that cannot run. Carries every problem found, not just the first."""

    def __init__(self, problems: list[Problem]):
        self.problems = list(problems)
        super().__init__(self.render())

    def render(self) -> str:
        n = len(self.problems)
        head = f"invalid spec: {n} problem{'s' if n != 1 else ''}"
        return "\n".join([head, *(f"  - {p}" for p in self.problems)])
