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


# ---------------------------------------------------------------------------------------------
# One error path for every command line


DEBUG_FLAG = "--debug"


def describe_error(exc: BaseException) -> str:
    """One line for a user: what failed and on which file, without Python's internals."""
    if isinstance(exc, UnicodeDecodeError):
        return f"input is not UTF-8 text ({exc.reason} at byte {exc.start})"
    if isinstance(exc, OSError) and exc.filename:
        what = exc.strerror or str(exc)
        return f"{exc.filename}: {what}" + (f" -> {exc.filename2}" if exc.filename2 else "")
    if isinstance(exc, MemoryError):
        return "out of memory"
    if isinstance(exc, RecursionError):
        return "input nested too deeply"
    text = str(exc).strip()
    first = text.splitlines()[0][:500] if text else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def run_guarded(prog: str, command, argv) -> int:
    """``command(argv)`` with one error path: its own messages and exit codes as they are; a spec
    error printed with every problem (exit 2); anything else one line naming the error (exit 1), and a
    Python traceback only with ``--debug`` (taken out of ``argv`` wherever it stands) or
    ``ENGINE_DEBUG=1``. Ctrl-C exits 130."""
    import os
    import sys

    argv = list(argv)
    debug = DEBUG_FLAG in argv or os.environ.get("ENGINE_DEBUG") == "1"
    argv = [a for a in argv if a != DEBUG_FLAG]
    if debug:
        return int(command(argv) or 0)
    try:
        return int(command(argv) or 0)
    except KeyboardInterrupt:
        print(f"\n{prog}: interrupted", file=sys.stderr)
        return 130
    except SpecError as exc:
        print(exc.render(), file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - the one place an unexpected error becomes a message
        print(f"{prog}: {describe_error(exc)}\n  (an unexpected failure: rerun with {DEBUG_FLAG} for the traceback)",
              file=sys.stderr)
        return 1
