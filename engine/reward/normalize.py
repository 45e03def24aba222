"""String normalisation of answers: strip LaTeX noise, units and formatting.

Pure string work (no sympy), so it is safe and cheap in the parent process.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from typing import Optional

from compiler.boxed import match_braces

#: Answers longer than this are compared as strings only (never parsed).
MAX_SYMBOLIC_CHARS = 1_000

_UNITS = (
    "cm", "mm", "km", "m", "meter", "meters", "metre", "metres", "centimeter", "centimeters",
    "kilometer", "kilometers", "millimeter", "millimeters", "inch", "inches", "in", "foot", "feet",
    "ft", "yard", "yards", "yd", "mile", "miles", "mi", "unit", "units", "sq", "square", "cubic",
    "degree", "degrees", "deg", "radian", "radians", "rad", "second", "seconds", "sec", "s",
    "minute", "minutes", "min", "hour", "hours", "hr", "hrs", "h", "day", "days", "week", "weeks",
    "month", "months", "year", "years", "dollar", "dollars", "cent", "cents", "euro", "euros",
    "pound", "pounds", "lb", "lbs", "ounce", "ounces", "oz", "gram", "grams", "g", "kg", "kilogram",
    "kilograms", "liter", "liters", "litre", "litres", "l", "ml", "gallon", "gallons", "mph",
    "kph", "percent", "people", "students", "times", "ways", "points", "pages", "marbles", "apples",
    "boxes", "books", "eggs", "cookies", "coins", "tickets", "mg", "j", "kj", "n", "w", "kw", "v",
    "a", "k", "pa", "kpa", "hz", "ev", "mev", "kev", "j/s", "m/s", "km/h", "cm^2", "m^2",
)
#: Words that may follow a number as its unit (the last-number fallback keeps ``12 cm``).
UNIT_WORDS = frozenset(_UNITS) | {"pct", "percentage", "yuan", "rmb", "usd", "m²", "cm²"}
_UNIT_ALT = "|".join(sorted((re.escape(u) for u in _UNITS), key=len, reverse=True))
_TEXT_CMD_RE = re.compile(r"\\(?:text|textbf|textit|textrm|textnormal|mathrm|mathbf|mathit|mbox|"
                          r"operatorname|mathsf|mathtt|bf|rm)\s*\{")
# "\text{ cm}^2" style unit suffix after something non-empty
_TEXT_UNIT_RE = re.compile(r"(?<=\S)\s*\\(?:text|mbox|mathrm)\s*\{\s*(?:" + _UNIT_ALT +
                           r")\.?\s*\}(?:\s*\^\s*\{?\s*[23]\s*\}?)?\s*$", re.IGNORECASE)
_BARE_UNITS = tuple(u for u in _UNITS if len(u) >= 2 and u not in ("sec", "in", "ln", "pa", "ev"))
_BARE_UNIT_ALT = "|".join(sorted((re.escape(u) for u in _BARE_UNITS), key=len, reverse=True))
# bare unit words after a number and a space: "12 inches", "5 cm^2"
_BARE_UNIT_RE = re.compile(r"(?<=[\d}])\s+(?:" + _BARE_UNIT_ALT +
                           r")\.?(?:\s*\^\s*\{?\s*[23]\s*\}?)?\s*$", re.IGNORECASE)
_SPACING_RE = re.compile(r"(?<!\\)\\(?:[!,;:> ]|(?:quad|qquad|displaystyle|textstyle|limits|nolimits|"
                         r"big|Big|bigg|Bigg)(?![A-Za-z]))")
_LEFT_RIGHT_RE = re.compile(r"\\(?:left|right|bigl|bigr|Bigl|Bigr|biggl|biggr)(?![A-Za-z])\s*\.?")
_DEGREE_RE = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|\\circ|°|\\degree")
_THOUSANDS_RE = re.compile(r"-?(?!0,)\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_MC_RE = re.compile(r"^\(?([A-E])\)?(?:$|[\s.:),])")
#: Commands that are double-escaped in JSON-escaped output (``\\frac`` for ``\frac``).
_DOUBLE_ESCAPED_RE = re.compile(
    r"(?<!\\)\\\\(?=(?:frac|dfrac|tfrac|cfrac|sqrt|boxed|fbox|le|ge|leq|geq|lt|gt|ne|neq|pi|left|right|"
    r"text|textbf|mathrm|mathbf|cdot|times|infty|cup|cap|in|pm|mp|sin|cos|tan|log|ln|approx|circ|"
    r"quad|qquad|dots|ldots|cdots|binom|angle|begin|end|div|sum|prod|alpha|beta|theta|lambda|"
    r"displaystyle|emptyset|varnothing)(?![A-Za-z])|[%$])")
_PERCENT_WORD_RE = re.compile(r"(?<=[\d}])\s*(?:\\text\s*\{\s*)?(?:percent|percentage|pct)\b\s*\}?", re.IGNORECASE)
_OR_RE = re.compile(r"\\text\s*\{\s*(?:and|or)\s*\}|\\(?:lor|vee)(?![A-Za-z])|\b(?:and|or)\b"
                    r"|(?<=[\d)}])or(?=[\sA-Z(\\$])")
_MIXED_RE = re.compile(r"(?<![\d.}^_])(\d+)\s*\\frac\{(\d+)\}\{(\d+)\}")
_BRACKETED_ENV_RE = re.compile(r"[\[(]\s*(\\begin\{(\w+)\}.*\\end\{\2\})\s*[\])]", re.S)
_NUM_THEN_TEXT_RE = re.compile(r"(-?\d+(?:\.\d+)?)\s*\\(?:text|textnormal|mbox|mathrm)\s*\{([^{}]*)\}")
_SPACE_GROUPS_RE = re.compile(r"-?\d{1,3}(?: \d{3})+(?:\.\d+)?")
_GEOMETRY_RE = re.compile(r"(?:m\s*)?\\(?:angle|measuredangle|triangle|overline|overarc|widehat|arc)(?![A-Za-z])\s*")


def unescape_double(text: str) -> str:
    """``\\\\frac`` -> ``\\frac`` for known commands (JSON-escaped LaTeX); other text unchanged."""
    if "\\\\" not in text:
        return text
    return _DOUBLE_ESCAPED_RE.sub(r"\\", text)


def _semicolons(s: str) -> str:
    """``;`` separates items. Top-level ``;`` between groups that hold commas separates tuples:
    ``p=5,q=2;p=7,q=2`` -> ``(p=5,q=2),(p=7,q=2)``; otherwise it is a comma."""
    if ";" not in s:
        return s
    groups, depth, cur = [], 0, []
    for ch in s:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        if ch == ";" and depth == 0:
            groups.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    groups.append("".join(cur))
    groups = [g.strip() for g in groups if g.strip()]
    if len(groups) > 1 and any("," in g and not g.startswith(("(", "[", "\\{")) for g in groups):
        return ",".join(f"({g.replace(';', ',')})" for g in groups)
    return s.replace(";", ",")


def _mixed(m: "re.Match") -> str:
    w, a, b = m.groups()
    if int(b) == 0 or int(a) >= int(b):  # not a proper fraction: a product, left as written
        return m.group(0)
    return f"({w}+\\frac{{{a}}}{{{b}}})"


def _replace_braced_command(s: str, regex: re.Pattern) -> str:
    """Replace ``\\cmd{content}`` by ``content`` (brace-matched) for every match of ``regex``
    (whose match ends with the opening brace)."""
    out = []
    i = 0
    for _ in range(200):
        m = regex.search(s, i)
        if not m:
            break
        close = match_braces(s, m.end() - 1)
        out.append(s[i:m.start()])
        if close < 0:  # unbalanced: drop the command word only
            i = m.end()
            continue
        out.append(s[m.end():close])
        i = close + 1
    out.append(s[i:])
    return "".join(out)


@dataclass(frozen=True)
class Normalized:
    text: str        # cleaned answer (spaces kept where they separate tokens)
    key: str         # text without spaces: the string used for exact comparison
    percent: bool    # a percent sign was removed


def _strip_math_delims(s: str) -> str:
    s = s.strip()
    for a, b in (("\\(", "\\)"), ("\\[", "\\]"), ("$$", "$$")):
        if s.startswith(a) and s.endswith(b) and len(s) >= len(a) + len(b):
            s = s[len(a):len(s) - len(b)].strip()
    return s.replace("$", "")


@lru_cache(maxsize=65_536)
def normalize(answer: str) -> Normalized:
    """Normalise an answer string (see module doc). Cached: gold answers repeat."""
    s = answer if len(answer) <= 4 * MAX_SYMBOLIC_CHARS else answer[:4 * MAX_SYMBOLIC_CHARS]
    s = unescape_double(s)
    s = s.replace("\n", " ").replace("\t", " ").replace("\r", " ")
    s = s.replace("\\$", "").replace("\\%", "%")
    s = re.sub(r"\\+\s*$", "", s)            # a trailing stray backslash
    s = re.sub(r"\\!\s*", "", s)             # negative thin space: 32,\! 349 is one number
    s = _PERCENT_WORD_RE.sub("%", s)
    s = _strip_math_delims(s)
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace("\\cfrac", "\\frac")
    s = s.replace("\\varnothing", "\\emptyset").replace("\\leqslant", "\\le").replace("\\geqslant", "\\ge")
    s = s.replace("\\leq", "\\le").replace("\\geq", "\\ge").replace("\\neq", "\\ne")
    s = s.replace("≤", "\\le").replace("≥", "\\ge").replace("−", "-").replace("π", "\\pi")
    s = s.replace("<=", "\\le ").replace(">=", "\\ge ").replace("!=", "\\ne ")
    s = re.sub(r"\\lt(?![A-Za-z])", "<", s)
    s = re.sub(r"\\gt(?![A-Za-z])", ">", s)
    s = _GEOMETRY_RE.sub("", s)
    s = s.replace("∞", "\\infty").replace("×", "\\times").replace("·", "\\cdot").replace("√", "\\sqrt")
    s = _LEFT_RIGHT_RE.sub("", s)
    s = re.sub(r"\\q?quad(?=[A-Za-z])", " ", s)   # "\quadx_2": a missing space
    m = _BRACKETED_ENV_RE.fullmatch(s.strip())
    if m:   # [\begin{array}...\end{array}]: the brackets of a matrix
        s = m.group(1)
    s = _SPACING_RE.sub(" ", s)
    s = s.replace("~", " ")
    s = _DEGREE_RE.sub("", s)
    percent = "%" in s
    if percent:
        s = s.replace("%", "")
    s = _OR_RE.sub(",", s)
    s = _semicolons(s)
    s = re.sub(r",(?:\s*,)+", ",", s).strip().strip(",").strip()
    # units: "\text{ cm}^2", then any \text{...} becomes its content, then bare unit words
    for _ in range(3):
        t = _TEXT_UNIT_RE.sub("", s).strip()
        if t == s:
            break
        s = t
    m = _NUM_THEN_TEXT_RE.fullmatch(s)
    if m and not re.search(r"\d|\b(?:no|not|wait|or|wrong)\b", m.group(2), re.IGNORECASE):
        s = m.group(1)   # "17\text{ any text}": words after a number are its unit
    s = _replace_braced_command(s, _TEXT_CMD_RE)
    if re.search(r"\d", s):
        for _ in range(2):
            t = _BARE_UNIT_RE.sub("", s).strip()
            if not t or t == s:
                break
            s = t
    # "x \in [0, 1]" -> "[0, 1]"
    s = re.sub(r"^[A-Za-z]\s*\\in\s*", "", s)
    # thousands separators
    s = re.sub(r"\{\s*,\s*\}", "", s)
    if _THOUSANDS_RE.fullmatch(s) or _SPACE_GROUPS_RE.fullmatch(s):
        s = s.replace(" ", "").replace(",", "")
    s = re.sub(r"(?<=[\w)}])\*\*(?=[\w({-])", "^", s)   # Python power
    s = s.replace("**", "")                               # markdown bold
    # \frac12 -> \frac{1}{2}, \frac1x, \sqrt2 -> \sqrt{2}
    s = re.sub(r"\\frac\s*(\w)\s*(\w)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\frac\s*(\{[^{}]*\})\s*(\w)", r"\\frac\1{\2}", s)
    s = re.sub(r"\\frac\s*(\w)\s*(\{)", r"\\frac{\1}\2", s)
    s = re.sub(r"\\sqrt\s*(\w)", r"\\sqrt{\1}", s)
    s = _MIXED_RE.sub(_mixed, s)
    s = re.sub(r"\s+", " ", s).strip()
    s = s.rstrip(".").strip()
    while s.startswith("{") and match_braces(s, 0) == len(s) - 1:  # "{...}" wrapping the whole answer
        s = s[1:-1].strip()
    return Normalized(text=s, key=s.replace(" ", ""), percent=percent)


def multiple_choice_letter(norm: Normalized) -> Optional[str]:
    """'C' for answers like ``C``, ``(C)``, ``\\textbf{(C)}``, ``(C) 12``; else None."""
    m = _MC_RE.match(norm.text)
    return m.group(1) if m else None


# ---------------------------------------------------------------------------------------------
# Literal numbers without sympy: the fast path.

_LIT_NUM_RE = re.compile(r"([+-]?)(\d+(?:\.\d*)?|\.\d+)(?:[eE]([+-]?\d{1,3}))?")
_LIT_FRAC_RE = re.compile(r"([+-]?)\\frac\{([+-]?\d{1,50})\}\{([+-]?\d{1,50})\}")
_LIT_SLASH_RE = re.compile(r"([+-]?)(\d{1,50})/(\d{1,50})")
_SCI_TIMES_RE = re.compile(r"([+-]?(?:\d+(?:\.\d*)?|\.\d+))(?:\\times|\\cdot|\*)10\^\{?([+-]?\d{1,3})\}?")


@dataclass(frozen=True)
class LiteralNumber:
    value: Fraction
    decimals: Optional[int]   # digits after the decimal point when written as a decimal


_DECIMAL_COMMA_RE = re.compile(r"([+-]?)(\d+),(\d+)")
_LIT_MIXED_RE = re.compile(r"([+-]?)\((\d{1,50})\+\\frac\{(\d{1,50})\}\{(\d{1,50})\}\)")


def decimal_comma(key: str) -> Optional[LiteralNumber]:
    """``3,5`` -> 3.5 (a decimal comma). Three digits after the comma group thousands instead
    (``1,234`` is 1234), except after a leading 0 (``0,111`` is 0.111)."""
    m = _DECIMAL_COMMA_RE.fullmatch(key)
    if not m:
        return None
    sign, a, b = m.groups()
    if len(b) == 3 and a != "0":
        return None
    v = Fraction(f"{a}.{b}")
    return LiteralNumber(-v if sign == "-" else v, len(b))


def literal_number(key: str) -> Optional[LiteralNumber]:
    """Parse a plain numeric literal (int, decimal, fraction, a*10^k, mixed number) from a
    normalised key."""
    if len(key) > 120:
        return None
    m = _LIT_MIXED_RE.fullmatch(key)
    if m:
        sign, w, a, b = m.groups()
        v = int(w) + Fraction(int(a), int(b))
        return LiteralNumber(-v if sign == "-" else v, None)
    m = _LIT_NUM_RE.fullmatch(key)
    if m:
        sign, body, exp = m.groups()
        if len(body) > 100:
            return None
        v = Fraction(body)
        decimals = None
        if "." in body:
            decimals = len(body.split(".", 1)[1])
        if exp is not None:
            e = int(exp)
            v *= Fraction(10) ** e
            decimals = max(0, (decimals or 0) - e) if (decimals is not None or e < 0) else None
        return LiteralNumber(-v if sign == "-" else v, decimals)
    m = _SCI_TIMES_RE.fullmatch(key)
    if m:
        mant, exp = m.groups()
        base = literal_number(mant)
        if base is None:
            return None
        e = int(exp)
        dec = None
        if base.decimals is not None or e < 0:
            dec = max(0, (base.decimals or 0) - e)
        return LiteralNumber(base.value * Fraction(10) ** e, dec)
    for rx in (_LIT_FRAC_RE, _LIT_SLASH_RE):
        m = rx.fullmatch(key)
        if m:
            sign, a, b = m.groups()
            if int(b) == 0:
                return None
            v = Fraction(int(a), int(b))
            return LiteralNumber(-v if sign == "-" else v, None)
    return None


def _significant_digits(v: Fraction, decimals: int) -> int:
    digits = str(abs(v.numerator * 10 ** decimals // v.denominator)).lstrip("0")
    return len(digits)


def _terminating(v: Fraction) -> bool:
    d = v.denominator
    for p in (2, 5):
        while d % p == 0:
            d //= p
    return d == 1


def rationals_equal(pred: Fraction, gold: Fraction, pred_decimals: Optional[int],
                    gold_decimals: Optional[int]) -> bool:
    """Equality of two exact rationals under the decimal-writing rules.

    * gold written as a decimal, prediction an exact non-terminating rational (1/3 for 0.333):
      the prediction rounded to the gold's decimals. An exact prediction with a finite decimal
      expansion (11/20 = 0.55 for gold 0.6) must equal the gold: it has more digits than the
      gold, it is not a rounding of it.
    * prediction written as a decimal, gold a non-terminating rational (1/3): relative 1e-6.
    * otherwise exact equality.
    """
    if pred == gold:
        return True
    if gold_decimals is not None and pred_decimals is None:
        if _terminating(pred):
            return False
        return abs(pred - gold) * 2 * 10 ** gold_decimals <= 1
    if pred_decimals is not None and gold_decimals is None and not _terminating(gold):
        if abs(pred - gold) <= Fraction(1, 10 ** 6) * abs(gold):
            return True
        # 0.333 for 1/3: the gold rounded to the prediction's digits, with 3 significant digits
        return _significant_digits(pred, pred_decimals) >= 3 and \
            abs(pred - gold) * 2 * 10 ** pred_decimals <= 1
    return False


def numbers_equal_with_percent(pred: Fraction, gold: Fraction, pdec: Optional[int], gdec: Optional[int],
                               pred_percent: bool, gold_percent: bool) -> bool:
    if rationals_equal(pred, gold, pdec, gdec):
        return True
    if gold_percent and not pred_percent:
        return rationals_equal(pred, gold / 100, pdec, None if gdec is None else gdec + 2)
    if pred_percent and not gold_percent:
        return rationals_equal(pred / 100, gold, None if pdec is None else pdec + 2, gdec)
    return False
