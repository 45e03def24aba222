"""Cheap behaviour signals of responses, logged during training and evaluation.

* Reflection keywords: the recipe's keyword baseline for reasoning behaviour ("recheck", "rethink",
  "try again", "wait", "alternatively", "retry", "however"). Keywords correlate only weakly with the
  behaviours an LLM judge labels (verification, backtracking, ...), so this is a baseline, not a
  behaviour classifier.
* Repetition: whether a response ends in a loop, the usual failure of a long response that never
  stops.
"""

from __future__ import annotations

import re
from typing import Sequence

#: The recipe's reflection keywords.
REFLECTION_KEYWORDS: tuple[str, ...] = ("recheck", "rethink", "try again", "wait", "alternatively", "retry", "however")

#: Matched against the lower-cased text (faster than re.IGNORECASE).
_REFLECTION_RE = re.compile(r"\b(?:" + "|".join(re.escape(k).replace(r"\ ", r"\s+") for k in REFLECTION_KEYWORDS) + r")\b")


_FIRST_WORDS = tuple(sorted({k.split()[0] for k in REFLECTION_KEYWORDS}))


def has_reflection_keyword(text: str) -> bool:
    """Whether ``text`` contains a reflection keyword as a whole word (any case; "try  again" across
    spaces counts, "awaiting" does not)."""
    low = text.lower()
    if not any(w in low for w in _FIRST_WORDS):  # plain substring scans first: most texts stop here
        return False
    return _REFLECTION_RE.search(low) is not None


def ends_in_loop(token_ids: Sequence[int], max_period: int = 100, min_tokens: int = 32) -> bool:
    """Whether the response ends by repeating one unit of ``p`` tokens (``1 <= p <= max_period``).

    The repeated tail must be at least ``max(3p, min_tokens)`` tokens long: three copies of the unit,
    and at least ``min_tokens`` tokens, so a short run such as "000" is not a loop. Costs
    O(max_period^2) token comparisons, done as list comparisons.
    """
    ids = list(token_ids[-max(3 * max_period, min_tokens):])  # only the tail can hold the loop
    n = len(ids)
    for p in range(1, max_period + 1):
        span = max(3 * p, min_tokens)
        if span > n:
            break
        tail = ids[n - span:]
        if tail[p:] == tail[:-p]:
            return True
    return False


def behaviour_ratios(texts: Sequence[str], token_ids: Sequence[Sequence[int]]) -> dict[str, float]:
    """``reflection_ratio`` and ``repeat_ratio``: the shares of responses with a reflection keyword
    and of responses that end in a loop."""
    n = max(1, len(texts))
    return {"reflection_ratio": sum(map(has_reflection_keyword, texts)) / n,
            "repeat_ratio": sum(ends_in_loop(ids) for ids in token_ids) / n}
