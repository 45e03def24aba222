"""Finding the final answer in a model response.

Order of preference, each a small rule (``extract_answer_info``):

1. ``\\boxed{...}`` / ``\\fbox{...}`` (brace-matched): the last box, joined with the boxes just
   before it when only a separator stands between them (``\\boxed{2} and \\boxed{3}``: one
   answer per box, read as a list). A box followed by a retraction (``wait``, ``wrong``...)
   or by a long stretch of text is not joined.
2. The text after the last "the answer is" / "final answer is" / "answer:": its math span, or
   the value after its last "is" when it is a sentence.
3. For a multiple-choice gold, the choice letter (``(B)``, ``B) 42``, ``I think it's B``).
4. The last math span (``$...$``, ``$$...$$``, ``\\(...\\)``, ``\\[...\\]``) of the response.
5. Only in plain text (no math delimiters, no code): the last number that stands as its own
   token. ``AZYUK2A`` and the ``2`` of an unboxed ``\\frac{1+\\sqrt5}{2}`` are not numbers.

When none applies the response has no answer: a guessed digit would be a reward to hack.
Double-escaped LaTeX (``\\\\frac``, JSON-escaped output) is unescaped first. All scans are
linear and run on a bounded tail of the response.
"""

from __future__ import annotations

import re
from typing import List, Optional, Sequence, Tuple

from compiler.boxed import BOX_RE as _BOX_RE
from compiler.boxed import boxes as _boxes
from compiler.boxed import last_boxed, match_braces
from engine.reward.normalize import unescape_double

#: Only the last this-many characters of a response are searched for an answer.
MAX_RESPONSE_CHARS = 32_768
#: An extracted answer longer than this is cut (it is then almost surely not a real answer).
MAX_ANSWER_CHARS = 2_000
#: Boxes are joined only across a gap of at most this many characters.
MAX_BOX_GAP_CHARS = 48

_PHRASE_RE = re.compile(r"(?:final\s+answer|the\s+answer|answer)\s*(?:is\s*:?|:)\s*", re.IGNORECASE)
_NUMBER_RE = re.compile(r"(?<![\w\\{}^_.,])[-−]?(?:(?:\d{1,3}(?:,\d{3})+|\d{1,3}(?: \d{3})+(?![\d.,])|\d+)(?:[.,]\d+)?(?:/\d+)?|\.\d+)"
                        r"(?![\d.,]\d)")
_WORD_AFTER_RE = re.compile(r"[A-Za-z]+")
_CODE_RE = re.compile(r"__\w+__|\bimport\s|\beval\s*\(|\bexec\s*\(|\blambda\b|os\.system|subprocess|"
                      r"\bopen\s*\(\s*['\"]|getattr\s*\(")
_RETRACT_RE = re.compile(r"\b(?:no|not|wait|wrong|but|however|instead|actually|incorrect|mistake|"
                         r"recheck|check|oops|hmm)\b", re.IGNORECASE)
_CHOICE_TOKEN_RE = re.compile(r"(?<![A-Za-z0-9\\])\(?([A-E])\)?(?![A-Za-z0-9])")


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


def _is_separator_gap(gap: str) -> bool:
    """Whether the text between two boxes only separates them (``and``, ``,``, ``\\quad``...)."""
    if len(gap) > MAX_BOX_GAP_CHARS or "\n\n" in gap or re.search(r"[.!?](?:\s|\\n)", gap):
        return False   # a sentence ends between them: two statements, not one list
    if re.search(r"[A-Za-z]{2,}", re.sub(r"\\[A-Za-z]+", "", gap)) and \
            not re.search(r"\b(?:and|or)\b|[,;&]|\\q?quad", gap):
        return False   # words between the boxes, but no separator
    return not _RETRACT_RE.search(gap)


def boxed_answer(text: str) -> Optional[str]:
    """The boxed answer: the last box, with the boxes joined to it by separators (a list)."""
    boxes = _boxes(text)
    if not boxes:
        return None
    group = [boxes[-1]]
    for k in range(len(boxes) - 2, -1, -1):
        gap = text[boxes[k][1]:group[0][0]]
        if not _is_separator_gap(gap):
            break
        group.insert(0, boxes[k])
    items = [_unbox(c).strip() for _, _, c in group]
    items = [c for c in items if c]
    if not items:
        return ""
    return items[0] if len(items) == 1 else ", ".join(items)


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


_DELIM_RE = re.compile(r"\\[\[(]|\\.|\$\$|\$")
_INLINE_END_RE = re.compile(r"\\.|\$|\n")


def math_spans(text: str) -> List[Tuple[int, int, str]]:
    """Math spans ``(start, end, content)`` left to right: ``$$..$$``, ``\\[..\\]`` (may span
    lines), ``$..$`` and ``\\(..\\)`` (one line). An unpaired ``$`` is a dollar sign."""
    out = []
    i, n = 0, len(text)
    while i < n:
        m = _DELIM_RE.search(text, i)
        if not m:
            break
        d = m.group(0)
        if d in ("\\[", "\\("):
            close = "\\]" if d == "\\[" else "\\)"
            j = text.find(close, m.end())
            if j >= 0 and (d == "\\[" or "\n" not in text[m.end():j].strip(" \t")):
                out.append((m.start(), j + 2, text[m.end():j]))
                i = j + 2
            else:
                i = m.end()
        elif d == "$$":
            j = text.find("$$", m.end())
            if j < 0:
                i = m.end()
                continue
            out.append((m.start(), j + 2, text[m.end():j]))
            i = j + 2
        elif d == "$":
            k = m.end()
            while True:
                e = _INLINE_END_RE.search(text, k)
                if e is None or e.group(0) == "\n":
                    e = None
                    break
                if e.group(0) == "$":
                    break
                k = e.end()
            if e is None:
                i = m.end()
                continue
            out.append((m.start(), e.end(), text[m.end():e.start()]))
            i = e.end()
        else:   # an escaped character (\$, \\)
            i = m.end()
    return out


def _has_math_delimiters(text: str) -> bool:
    return text.count("$") - text.count("\\$") >= 2 or "\\(" in text or "\\[" in text


_WORDS_RE = re.compile(r"[A-Za-z]{3,}")


_LATEX_WORDS_RE = re.compile(r"\$[^$]*\$|\\(?:begin|end)\s*\{[^{}]*\}|\\(?:text\w*|mathrm|mbox)\s*\{[^{}]*\}"
                             r"|\\[A-Za-z]+")


def _is_sentence(s: str) -> bool:
    """Several words outside math and ``\\text{}``: prose, not an answer."""
    return len(_WORDS_RE.findall(_LATEX_WORDS_RE.sub(" ", s))) >= 2


def _has_words(s: str) -> bool:
    return bool(_WORDS_RE.search(_LATEX_WORDS_RE.sub(" ", s)))


def _statement_value(s: str) -> Optional[str]:
    """The value a final statement gives: the last math span, else the text after its last
    'is' / 'are' / '='. ``The largest $n$ is 34`` -> ``34``."""
    m = None
    for m in re.finditer(r"\b(?:is|are|equals|be)\b|=", s):
        pass
    tail = s[m.end():] if m else s
    spans = math_spans(tail)
    if spans:
        return spans[-1][2].strip() or None
    tail = tail.strip().rstrip(".").strip()
    if tail and not _is_sentence(tail) and len(tail) < 80:
        return tail
    spans = math_spans(s)
    if spans:
        return spans[-1][2].strip() or None
    return _last_number(s)


def _after_phrase(text: str) -> Optional[str]:
    last = None
    for m in _PHRASE_RE.finditer(text):
        last = m
    if last is None:
        return None
    rest = text[last.end():].lstrip()
    spans = math_spans(rest)
    if spans and spans[0][0] == 0:  # "the answer is $5$, since ..." -> the math span
        return spans[0][2].strip() or None
    # up to the end of the line; then up to a sentence end (". " or a final ".")
    rest = rest.split("\n", 1)[0]
    m = re.search(r"\.(?=\s|$)", rest)
    if m:
        rest = rest[:m.start()]
    rest = rest.strip()
    if _is_sentence(rest):
        return _statement_value(rest)
    rest = rest.strip("$").strip().rstrip(".").strip()
    return rest or None


_FINAL_RE = re.compile(r"final\s+answer\s*(?:is\s*:?|:)\s*", re.IGNORECASE)


def _final_after_box(text: str) -> Optional[str]:
    """A "final answer is X" statement after the last box that gives another value than the box
    is the later word ("... \\boxed{255} ... Final Answer: The final answer is $10,455$.")."""
    boxes = _boxes(text)
    last = None
    for last in _FINAL_RE.finditer(text, boxes[-1][1]):
        pass
    if last is None:
        return None
    value = _after_phrase(text[last.start():])
    if not value or not re.search(r"\d", value):
        return None
    from engine.reward.normalize import normalize
    if normalize(value).key == normalize(_unbox(boxes[-1][2])).key:
        return None
    return value


def choice_letter(text: str) -> Optional[str]:
    """The multiple-choice letter a response gives, or None when none or several are given.

    After an answer phrase: the one letter of its clause. Else a letter opening the response
    (``D. it can't be...``), else the last standalone letter.
    """
    last = None
    for m in _PHRASE_RE.finditer(text):
        last = m
    if last is not None:
        clause = re.split(r"[,;.\n]", text[last.end():], maxsplit=1)[0]
        letters = {m.group(1) for m in _CHOICE_TOKEN_RE.finditer(clause)}
        return letters.pop() if len(letters) == 1 else None
    m = re.match(r"\s*\(?([A-E])\)?(?:[.):]|\s*$)", text)
    if m:
        return m.group(1)
    found = None
    for found in _CHOICE_TOKEN_RE.finditer(text):
        pass
    if found is None:
        return None
    # "A or B" at the end is two letters: no answer
    before = text[max(0, found.start() - 6):found.start()]
    if re.search(r"\bor\s*$", before) and _CHOICE_TOKEN_RE.search(before + " "):
        return None
    return found.group(1)


def _last_number(text: str) -> Optional[str]:
    """The last number standing as its own token (a unit word may follow it: ``12cm``)."""
    from engine.reward.normalize import UNIT_WORDS
    last = None
    for m in _NUMBER_RE.finditer(text):
        w = _WORD_AFTER_RE.match(text, m.end())
        if w and w.group(0).lower() not in UNIT_WORDS:
            continue  # "2x", "7th": part of another token
        last = m
    if last is None:
        return None
    s = last.group(0).replace("−", "-")
    if re.fullmatch(r"-?\d{1,3}(?:[, ]\d{3})+(?:\.\d+)?", s):
        s = s.replace(",", "").replace(" ", "")
    return s


def extract_answer_info(response: str, end_tokens: Sequence[str] = (),
                        assistant_marker: Optional[str] = None,
                        choice: bool = False) -> Tuple[Optional[str], bool]:
    """``(answer, boxed)``: the extracted answer (or None) and whether it came from a box.

    ``choice``: the gold is a multiple-choice letter, so a letter in prose is an answer.
    """
    if not isinstance(response, str):
        return None, False
    text = strip_prompt(response, assistant_marker)
    text = cut_at_end_tokens(text, end_tokens)
    if len(text) > MAX_RESPONSE_CHARS:
        text = text[-MAX_RESPONSE_CHARS:]
    text = unescape_double(text)
    boxed = boxed_answer(text)
    if boxed is not None:
        if not boxed:
            return None, False  # an empty box is no answer
        final = _final_after_box(text)
        if final is not None:
            return final[:MAX_ANSWER_CHARS], False
        return boxed[:MAX_ANSWER_CHARS], True
    if choice:
        letter = choice_letter(text)
        return (letter, False) if letter else (None, False)
    phrase = _after_phrase(text)
    if phrase is not None:
        return phrase[:MAX_ANSWER_CHARS], False
    spans = math_spans(text)
    if spans:
        # a number in the prose after the last span is the later statement ("so it takes 5 steps")
        num = _last_number(text[spans[-1][1]:])
        if num is not None:
            return num, False
        ans = spans[-1][2].strip()
        if _is_sentence(ans):   # "$? just about 1$": a sentence inside the delimiters
            ans = _statement_value(ans) or ""
        if ans and not ans.startswith("\\begin{array}"):
            return ans[:MAX_ANSWER_CHARS], False
    if _has_math_delimiters(text) or _CODE_RE.search(text):
        return None, False   # LaTeX prose without a span, or injection text: no guessing
    bare = text.strip()
    if bare and len(bare) <= 80 and "\n" not in bare and \
            not re.search(r"[A-Za-z]{2,}", re.sub(r"or|and", " ", _LATEX_WORDS_RE.sub(" ", bare))):
        return bare, False   # the whole response is a bare answer: "-\frac{10}{9}", "1000,99"
    num = _last_number(text)
    return (num, False) if num is not None else (None, False)


def gold_answer(gold: str) -> str:
    """A gold written as a solution (a box, or several sentences) is reduced to its answer the
    way a response is; a plain gold is returned as it is."""
    if "\\boxed" in gold or "\\fbox" in gold or (len(gold) > 40 and _is_sentence(gold)):
        if not _boxes(unescape_double(gold)):
            m = None
            for m in re.finditer(r"\\(?:boxed|fbox)\s*\{", unescape_double(gold)):
                pass
            if m is not None:   # a gold with an unclosed box: the text after it
                return unescape_double(gold)[m.end():].strip() or gold
        ans, _ = extract_answer_info(gold)
        if ans:
            return ans
        m = None
        for m in re.finditer(r"\\boxed\s*\{", unescape_double(gold)):
            pass
        if m is not None:   # a gold with an unclosed box: the text after it
            return unescape_double(gold)[m.end():].strip() or gold
    return gold


def extract_answer(response: str, end_tokens: Sequence[str] = ()) -> Optional[str]:
    """The final answer of a response, or None when it has none."""
    return extract_answer_info(response, end_tokens)[0]
