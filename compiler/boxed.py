"""Reading ``\\boxed{...}`` answers: brace matching and the boxes of a text.

A box marks the final answer both in the data (a MATH solution column, read by `compiler.columns` when
`engine plan` checks a data file, and by the engine when it loads one) and in model responses (the
reward, `engine.reward.extract`). One reader for all of them lives here, below the compiler and the
engine: pure string code, standard library only.
"""

from __future__ import annotations

import re
from typing import List, Optional, Tuple

#: ``\\boxed`` or ``\\fbox`` as a whole command (not ``\\boxedx``).
BOX_RE = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")


def match_braces(text: str, open_idx: int) -> int:
    """Index of the ``}`` closing the ``{`` at ``open_idx``, or -1. ``\\{`` and ``\\}`` are literal."""
    depth = 0
    i = open_idx
    n = len(text)
    while i < n:
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return -1


def boxes(text: str) -> List[Tuple[int, int, str]]:
    """Complete boxes as ``(start, end, content)``; an unclosed box (a cut response) is skipped."""
    out = []
    pos = 0
    while True:
        m = BOX_RE.search(text, pos)
        if not m:
            return out
        j = m.end()
        while j < len(text) and text[j] in " \t":
            j += 1
        if j < len(text) and text[j] == "{":
            end = match_braces(text, j)
            if end < 0:
                pos = m.end()
                continue
            out.append((m.start(), end + 1, text[j + 1:end]))
            pos = end + 1
        elif j > m.end():  # "\boxed 5": up to the next space or '$'
            mm = re.match(r"[^\s$]+", text[j:])
            if mm:
                out.append((m.start(), j + mm.end(), mm.group(0)))
                pos = j + mm.end()
            else:
                pos = j
        else:
            pos = m.end()


def last_boxed(text: str) -> Optional[str]:
    """Content of the last complete ``\\boxed{...}`` / ``\\fbox{...}``, or None.

    ``\\boxed 5`` (no braces) gives the following token. An unclosed last box (a response cut by
    the length limit) is skipped in favour of an earlier complete one.
    """
    found = boxes(text)
    return found[-1][2] if found else None
