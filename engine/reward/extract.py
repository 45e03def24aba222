"""Finding the final answer in a model response.

Order of preference (SimpleRL-Zoo): the last ``\\boxed{...}`` / ``\\fbox{...}`` (brace-matched),
else the text after the last "the answer is" / "final answer is", else the last number.
All scans are linear and run on a bounded tail of the response.
"""

from __future__ import annotations

import re
from typing import Optional, Sequence, Tuple

from engine.reward.normalize import match_braces

#: Only the last this-many characters of a response are searched for an answer.
MAX_RESPONSE_CHARS = 32_768
#: An extracted answer longer than this is cut (it is then almost surely not a real answer).
MAX_ANSWER_CHARS = 2_000

_BOX_RE = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_PHRASE_RE = re.compile(r"(?:final\s+answer|the\s+answer)\s*(?:is\s*:?|:)\s*", re.IGNORECASE)
_MATH_SPAN_RE = re.compile(r"\$\$?((?:\\.|[^$\\])*)\$")
_NUMBER_RE = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?|-?\.\d+")


def strip_prompt(text: str, assistant_marker: Optional[str]) -> str:
    """Drop everything up to and including the last assistant marker, if present."""
    if assistant_marker:
        idx = text.rfind(assistant_marker)
        if idx >= 0:
            return text[idx + len(assistant_marker):]
    return text


def cut_at_end_tokens(text: str, end_tokens: Sequence[str]) -> str:
    """Cut the text at the first occurrence of any end token."""
    cut = len(text)
    for tok in end_tokens:
        if tok:
            idx = text.find(tok, 0, cut)
            if idx >= 0:
                cut = idx
    return text[:cut]


def last_boxed(text: str) -> Optional[str]:
    """Content of the last complete ``\\boxed{...}`` / ``\\fbox{...}``, or None.

    ``\\boxed 5`` (no braces) gives the following token. An unclosed last box (a response cut by
    the length limit) is skipped in favour of an earlier complete one.
    """
    starts = [m.end() for m in _BOX_RE.finditer(text)]
    for pos in reversed(starts):
        j = pos
        while j < len(text) and text[j] in " \t":
            j += 1
        if j < len(text) and text[j] == "{":
            end = match_braces(text, j)
            if end < 0:
                continue
            return text[j + 1:end]
        if j > pos:  # "\boxed 5": up to the next space or '$'
            m = re.match(r"[^\s$]+", text[j:])
            if m:
                return m.group(0)
    return None


def _unbox(answer: str) -> str:
    """``\\boxed{\\boxed{x}}`` -> ``x`` (nested boxes)."""
    for _ in range(8):
        s = answer.strip()
        m = _BOX_RE.match(s)
        if not m:
            break
        j = m.end()
        while j < len(s) and s[j] == " ":
            j += 1
        if j < len(s) and s[j] == "{" and match_braces(s, j) == len(s) - 1:
            answer = s[j + 1:-1]
        else:
            break
    return answer


def _after_phrase(text: str) -> Optional[str]:
    last = None
    for m in _PHRASE_RE.finditer(text):
        last = m
    if last is None:
        return None
    rest = text[last.end():].lstrip()
    m = _MATH_SPAN_RE.match(rest)
    if m:  # "the answer is $5$, since ..." -> the math span
        rest = m.group(1)
    # up to the end of the line; then up to a sentence end (". " or a final ".")
    rest = rest.split("\n", 1)[0]
    m = re.search(r"\.(?=\s|$)", rest)
    if m:
        rest = rest[:m.start()]
    rest = rest.strip().strip("$").strip()
    rest = rest.rstrip(".").strip()
    return rest or None


def extract_answer_info(response: str, end_tokens: Sequence[str] = (),
                        assistant_marker: Optional[str] = None) -> Tuple[Optional[str], bool]:
    """``(answer, boxed)``: the extracted answer (or None) and whether it came from a box."""
    if not isinstance(response, str):
        return None, False
    text = strip_prompt(response, assistant_marker)
    text = cut_at_end_tokens(text, end_tokens)
    if len(text) > MAX_RESPONSE_CHARS:
        text = text[-MAX_RESPONSE_CHARS:]
    boxed = last_boxed(text)
    if boxed is not None:
        ans = _unbox(boxed).strip()
        if ans:
            return ans[:MAX_ANSWER_CHARS], True
        return None, False  # an empty box is no answer
    phrase = _after_phrase(text)
    if phrase is not None:
        return phrase[:MAX_ANSWER_CHARS], False
    last = None
    for m in _NUMBER_RE.finditer(text):
        last = m
    if last is not None:
        return last.group(0).replace(",", ""), False
    return None, False


def extract_answer(response: str, end_tokens: Sequence[str] = ()) -> Optional[str]:
    """The final answer of a response, or None when it has none."""
    return extract_answer_info(response, end_tokens)[0]
