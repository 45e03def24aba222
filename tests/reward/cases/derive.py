"""Labelled (response, ground truth, expected) cases derived from real benchmark answers.

The answers are read at run time from ``../shared/data/benchmarks`` beside the project (or
``$ENGINE_SHARED_DATA``); nothing is copied into the tree. Each case's label comes from how it
was built: a positive is the gold answer rewritten in a form that is equal by construction
(same string, LaTeX noise, another number notation), a negative is the gold answer changed in a
way that changes its value (a digit, a sign, the order of a tuple, ...). Rewrites that could be
ambiguous are skipped, never guessed.

``load_cases()`` returns hand-written cases (``handwritten.tsv``) plus the derived ones.
"""

from __future__ import annotations

import json
import os
import re
from fractions import Fraction
from pathlib import Path
from typing import Iterator, List, Optional

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]


def shared_data_dir() -> Optional[Path]:
    env = os.environ.get("ENGINE_SHARED_DATA")
    cands = [Path(env)] if env else []
    cands.append(REPO.parent / "shared" / "data")
    for c in cands:
        if (c / "benchmarks").is_dir():
            return c
    return None


def _rows(name: str) -> List[dict]:
    d = shared_data_dir()
    if d is None or not (d / "benchmarks" / name).exists():
        return []
    with open(d / "benchmarks" / name, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


_WRAPPERS = (
    "Let me work through this step by step.\n...\nSo the final answer is $\\boxed{{{a}}}$.",
    "We get the result.\n\nTherefore, the answer is $\\boxed{{{a}}}$",
    "Computing carefully, we find it. The answer is {a}.",
    "<think>some reasoning</think>\nFinal: \\boxed{{{a}}}",
)


def _response(answer: str, k: int) -> str:
    w = _WRAPPERS[k % len(_WRAPPERS)]
    if "The answer is {a}." in w:
        if "." in answer or "\n" in answer:
            w = _WRAPPERS[0]
        elif re.search(r"[\\^{}_]", answer):  # LaTeX in prose goes in math mode
            answer = f"${answer}$"
    return w.format(a=answer)


def _case(resp_answer: str, gold: str, expected: bool, typ: str, source: str, k: int,
          adversarial: bool = False) -> dict:
    return {"response": _response(resp_answer, k), "ground_truth": gold, "expected": expected,
            "type": typ, "adversarial": adversarial, "source": source}


_INT_RE = re.compile(r"-?\d+")
_FRAC_RE = re.compile(r"(-?)\\[dt]?frac\{(\d+)\}\{(\d+)\}")
_DEC_RE = re.compile(r"-?\d*\.\d+")


def _bump_digit(s: str) -> Optional[str]:
    """Change the last digit of the gold (a value-changing edit for the answers we apply it to)."""
    for m in reversed(list(re.finditer(r"\d", s))):
        i = m.start()
        d = int(s[i])
        return s[:i] + str((d + 1) % 10 if d != 9 else 7) + s[i + 1:]
    return None


def _classify(gold: str) -> str:
    g = gold.strip()
    if _INT_RE.fullmatch(g):
        return "integer"
    if _FRAC_RE.fullmatch(g):
        return "fraction"
    if _DEC_RE.fullmatch(g):
        return "decimal"
    if g.startswith("\\text"):
        return "text"
    if re.fullmatch(r"\\begin\{[pb]matrix\}.*\\end\{[pb]matrix\}", g):
        return "matrix"
    if "\\cup" in g or re.fullmatch(r"[\(\[].*,.*[\)\]]", g) and ("\\infty" in g or g[0] != g[-1].replace(")", "(")):
        return "interval"
    if re.fullmatch(r"\(.*\)", g) and "," in g:
        return "tuple"
    if "," in g:
        return "list"
    if "=" in g:
        return "equation"
    if "\\sqrt" in g or "\\pi" in g or re.search(r"[a-z]", g.replace("\\frac", "")):
        return "symbolic"
    return "other"


def _math_cases(golds: List[str], source: str) -> Iterator[dict]:
    for k, gold in enumerate(golds):
        typ = _classify(gold)
        # positives
        yield _case(gold, gold, True, typ, source, k)
        noisy = gold.replace("\\frac", "\\dfrac")
        if "\\left" not in gold:
            noisy = re.sub(r"(?<!\\left)\((?=[^()]*\)$)", r"\\left(", noisy, count=1)
            if noisy.startswith("\\left(") and noisy.endswith(")"):
                noisy = noisy[:-1] + "\\right)"
        if noisy != gold:
            yield _case(noisy, gold, True, typ, source + ":latex-noise", k + 1)
        if typ == "integer":
            v = int(gold)
            yield _case(f"{v}.0", gold, True, typ, source + ":decimal-form", k + 2)
            if abs(v) >= 1000:
                yield _case(f"{v:,}", gold, True, "thousands", source + ":thousands", k + 3)
            yield _case(f"x = {v}", gold, True, "equation", source + ":equation-form", k)
        if typ == "fraction":
            m = _FRAC_RE.fullmatch(gold.strip())
            sign, a, b = m.groups()
            v = Fraction(int(a), int(b)) * (-1 if sign else 1)
            yield _case(f"{sign}{a}/{b}", gold, True, typ, source + ":slash", k + 1)
            d = v.denominator
            while d % 2 == 0:
                d //= 2
            while d % 5 == 0:
                d //= 5
            if d == 1 and v.denominator <= 10_000:
                dec = str(float(v)) if len(str(float(v))) < 12 else None
                if dec:
                    yield _case(dec, gold, True, "decimal", source + ":decimal-of-fraction", k + 2)
            if int(a) != int(b) and int(a) != 0:
                yield _case(f"{sign}\\frac{{{b}}}{{{a}}}", gold, False, typ, source + ":inverted", k, True)
            yield _case(f"{sign}\\frac{{{int(a) + 1}}}{{{b}}}", gold, False, typ, source + ":num+1", k + 3, True)
        if typ == "tuple" or typ == "interval":
            inner = gold.strip()[1:-1]
            parts = [p.strip() for p in inner.split(",")]
            if len(parts) == 2 and parts[0] != parts[1] and "(" not in inner and "\\" not in inner:
                sw = gold.strip()[0] + parts[1] + ", " + parts[0] + gold.strip()[-1]
                yield _case(sw, gold, False, typ, source + ":swapped", k, True)
            if typ == "interval" and gold.strip()[0] in "([" and "\\cup" not in gold:
                flipped = ("[" if gold.strip()[0] == "(" else "(") + gold.strip()[1:]
                if not flipped.startswith("[-\\infty"):
                    yield _case(flipped, gold, False, typ, source + ":bracket", k + 1, True)
        # negatives
        if typ == "integer":
            v = int(gold)
            yield _case(str(v + 1), gold, False, typ, source + ":plus-one", k + 1, True)
            if v != 0:
                yield _case(str(-v), gold, False, typ, source + ":negated", k + 2, True)
                yield _case(str(v * 10), gold, False, typ, source + ":times-ten", k + 3)
        elif typ in ("symbolic", "other", "decimal", "matrix", "list", "equation"):
            b = _bump_digit(gold)
            if b is not None and b != gold and not re.search(r"\^\{?0|\\log|\\ln|!|\\text|\\mbox", gold):
                yield _case(b, gold, False, typ, source + ":digit-changed", k + 1, True)
            if typ == "symbolic" and " + " in gold and gold.count("+") == 1 and "-" not in gold:
                yield _case(gold.replace(" + ", " - "), gold, False, typ, source + ":sign", k + 2, True)


def _gsm8k_cases(limit: int) -> Iterator[dict]:
    rows = _rows("gsm8k.jsonl")[:limit]
    for k, r in enumerate(rows):
        gold = r["answer"].split("####")[-1].strip().replace(",", "")
        if not _INT_RE.fullmatch(gold):
            continue
        v = int(gold)
        forms = [f"{v}", f"\\${v}", f"{v:,}" if abs(v) >= 1000 else f"{v}.00"]
        yield _case(forms[k % 3], gold, True, "integer", "gsm8k", k)
        yield {"response": f"So she has {v} left.\nThe answer is {v}", "ground_truth": gold,
               "expected": True, "type": "extraction", "adversarial": False, "source": "gsm8k:phrase"}
        yield _case(str(v + (1 if k % 2 else -1)), gold, False, "integer", "gsm8k:off-by-one", k, True)


def derived_cases(gsm8k_limit: int = 400) -> List[dict]:
    out: List[dict] = []
    math500 = [r["answer"] for r in _rows("math500.jsonl")]
    out.extend(_math_cases(math500, "math500"))
    aime = [str(r["answer"]) for r in _rows("aime24.jsonl")]
    out.extend(_math_cases(aime, "aime24"))
    amc = [r["answer"] for r in _rows("amc23.jsonl")]
    for k, a in enumerate(amc):  # floats like 27.0: compare with the integer and a neighbour
        if isinstance(a, float) and a.is_integer():
            out.append(_case(str(int(a)), str(a), True, "integer", "amc23", k))
            out.append(_case(str(int(a) + 1), str(a), False, "integer", "amc23:plus-one", k, True))
    out.extend(_gsm8k_cases(gsm8k_limit))
    return out


def handwritten_cases() -> List[dict]:
    """Parse ``handwritten.tsv``: ``label<TAB>type<TAB>answer-or-response<TAB>gold``.

    label: ``+`` equivalent, ``-`` not equivalent, ``!`` not equivalent and adversarial (looks
    alike). A third column starting with ``R:`` is a whole response (``\\n`` for newlines);
    otherwise it is an answer, wrapped in a response that boxes it.
    """
    out = []
    for lineno, line in enumerate((HERE / "handwritten.tsv").read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split("\t")
        if len(parts) != 4:
            raise ValueError(f"handwritten.tsv:{lineno}: expected 4 tab-separated fields, got {len(parts)}")
        label, typ, ans, gold = parts
        if label not in "+-!":
            raise ValueError(f"handwritten.tsv:{lineno}: bad label {label!r}")
        if ans.startswith("R:"):
            resp = ans[2:].replace("\\n", "\n")
        else:
            resp = _response(ans, lineno)
        out.append({"response": resp, "ground_truth": gold, "expected": label == "+", "type": typ,
                    "adversarial": label == "!", "source": f"handwritten:{lineno}"})
    return out


def load_cases() -> List[dict]:
    return handwritten_cases() + derived_cases()


if __name__ == "__main__":
    from collections import Counter
    cs = load_cases()
    print(len(cs), "cases;", Counter(c["type"] for c in cs))
    print("adversarial:", sum(c["adversarial"] for c in cs), "positives:", sum(c["expected"] for c in cs))


# ---------------------------------------------------------------------------------------------
# The kind corpus (issue 9): other graders' test-suite facts, hand-written cases by kind, and
# cases derived at run time from the real benchmark golds. Every case has a kind and an origin.

def suite_cases(include_excluded: bool = False) -> List[dict]:
    """Facts (gold, response, verdict) from other graders' test suites (``suites.jsonl``).

    Facts whose label depends on the suite's own options or contradicts the mathematics carry an
    ``excluded`` reason and are left out unless ``include_excluded``.
    """
    out = []
    for line in (HERE / "suites.jsonl").read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        if "excluded" in r and not include_excluded:
            continue
        out.append({"response": r["response"], "ground_truth": r["gold"], "expected": r["expected"],
                    "type": r["kind"], "kind": r["kind"], "adversarial": False, "source": r["origin"],
                    "origin": r["origin"]})
    return out


def kind_cases() -> List[dict]:
    """``kinds.tsv``: ``label<TAB>kind<TAB>answer-or-R:response<TAB>gold<TAB>note``."""
    out = []
    for lineno, line in enumerate((HERE / "kinds.tsv").read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split("\t")
        if len(parts) != 5:
            raise ValueError(f"kinds.tsv:{lineno}: expected 5 tab-separated fields, got {len(parts)}")
        label, kind, ans, gold, _note = parts
        if label not in ("+", "-", "!"):
            raise ValueError(f"kinds.tsv:{lineno}: bad label {label!r}")
        resp = ans[2:] if ans.startswith("R:") else "The final answer is $\\boxed{" + ans + "}$."
        origin = f"kinds.tsv:{lineno}"
        out.append({"response": resp, "ground_truth": gold, "expected": label == "+", "type": kind,
                    "kind": kind, "adversarial": label == "!", "source": origin, "origin": origin})
    return out


def _kc(answer_or_response: str, gold: str, expected: bool, kind: str, origin: str,
        adversarial: bool = False, raw: bool = False) -> dict:
    resp = answer_or_response if raw else "The final answer is $\\boxed{" + answer_or_response + "}$."
    return {"response": resp, "ground_truth": gold, "expected": expected, "type": kind, "kind": kind,
            "adversarial": adversarial, "source": origin, "origin": origin}


_MIXED_RE = re.compile(r"(-?)(\d+)\s*\\[dt]?frac\{(\d+)\}\{(\d+)\}")
_SIMPLE_INTERVAL_RE = re.compile(r"([\[(])\s*(-?\d+(?:\.\d+)?)\s*,\s*(-?\d+(?:\.\d+)?)\s*([\])])")
_DEC_GOLD_RE = re.compile(r"(\d+)\.(\d{1,3})")


def _strip_dollars(s: str) -> str:
    return s.replace("$", "").strip()


def benchmark_kind_cases() -> List[dict]:
    """Kind cases built from the real golds in ``../shared/data/benchmarks`` (MATH500, OlympiadBench).

    Labels follow from the construction: the same value written another way is a positive; a
    value-changing edit (a mixed number read as a product, a swapped tuple, one of several
    answers, an exact value that only rounds to a decimal gold) is a negative.
    """
    out: List[dict] = []
    m5 = _rows("math500.jsonl")
    for k, r in enumerate(m5):
        gold = r["answer"].strip()
        o = f"math500:{r.get('unique_id', k)}"
        m = _MIXED_RE.fullmatch(gold)
        if m:
            sign, w, a, b = m.groups()
            v = (int(w) + Fraction(int(a), int(b))) * (-1 if sign else 1)
            out.append(_kc(f"\\frac{{{v.numerator}}}{{{v.denominator}}}", gold, True, "mixed_number", o))
            if _terminating_fraction(v):
                out.append(_kc(_decimal(v), gold, True, "mixed_number", o))
            prod = int(w) * Fraction(int(a), int(b)) * (-1 if sign else 1)
            if prod != v:
                out.append(_kc(_plain(prod), gold, False, "mixed_number", o + ":read-as-product", True))
            out.append(_kc(f"{sign}\\frac{{{a}}}{{{b}}}", gold, False, "mixed_number", o + ":fraction-part", True))
        m = _SIMPLE_INTERVAL_RE.fullmatch(gold)
        if m and "\\cup" not in gold:
            lo_b, lo, hi, hi_b = m.groups()
            if float(lo) < float(hi):
                lop = "<" if lo_b == "(" else "\\le"
                hip = "<" if hi_b == ")" else "\\le"
                out.append(_kc(f"{lo} {lop} x {hip} {hi}", gold, True, "ineq_interval", o))
                flip = "\\le" if lop == "<" else "<"
                out.append(_kc(f"{lo} {flip} x {hip} {hi}", gold, False, "ineq_interval", o + ":bracket", True))
        if gold.startswith("\\text{") and gold.endswith("}") and "(" not in gold:
            word = gold[6:-1].strip()
            if word and re.fullmatch(r"[A-Za-z ]+", word):
                out.append(_kc(word, gold, True, "text", o))
                out.append(_kc(f"\\text{{{word.upper()}}}", gold, True, "text", o + ":case"))
                out.append(_kc(word + "s", gold, False, "text", o + ":plural", True))
        m = _DEC_GOLD_RE.fullmatch(gold)
        if m:  # an exact value that only rounds to the gold is wrong
            d = len(m.group(2))
            v = Fraction(gold)
            near = v + Fraction(4, 10 ** (d + 1))
            out.append(_kc(f"\\frac{{{near.numerator}}}{{{near.denominator}}}", gold, False, "rounding",
                           o + ":rounds-to-gold", True))
            out.append(_kc(f"\\frac{{{v.numerator}}}{{{v.denominator}}}", gold, True, "rounding", o))
    ob = _rows("olympiadbench.jsonl")
    multi = 0
    for r in ob:
        o = f"olympiadbench:{r.get('id')}"
        finals = [_strip_dollars(x) for x in r.get("final_answer") or []]
        if not finals:
            continue
        parts: List[str] = []
        for f in finals:
            parts.extend(p.strip() for p in _split_top_commas(f))
        gold = ", ".join(finals)
        if r.get("is_multiple_answer") and 2 <= len(parts) <= 6 and multi < 30 and \
                all(len(p) < 40 and "=" not in p for p in parts):
            multi += 1
            boxes = " and ".join(f"$\\boxed{{{p}}}$" for p in reversed(parts))
            out.append(_kc(f"The solutions are {boxes}.", gold, True, "multi_box", o, raw=True))
            out.append(_kc(f"The solution is $\\boxed{{{parts[0]}}}$.", gold, False, "multi_box",
                           o + ":one-of-several", True, raw=True))
        m = re.fullmatch(r"\(([^(),]+),([^(),]+)\)", gold.replace(" ", ""))
        if m and not r.get("is_multiple_answer"):
            a, b = m.groups()
            out.append(_kc(f"(x, y) = ({a}, {b})", gold, True, "labelled", o))
            if a != b:
                out.append(_kc(f"(x, y) = ({b}, {a})", gold, False, "labelled", o + ":swapped", True))
    return out


def _split_top_commas(s: str) -> List[str]:
    parts, depth, cur = [], 0, []
    for ch in s:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return [p for p in parts if p.strip()]


def _terminating_fraction(v: Fraction) -> bool:
    d = v.denominator
    for p in (2, 5):
        while d % p == 0:
            d //= p
    return d == 1


def _decimal(v: Fraction) -> str:
    s = f"{float(v):.10f}".rstrip("0").rstrip(".")
    return s


def _plain(v: Fraction) -> str:
    if v.denominator == 1:
        return str(v.numerator)
    sign = "-" if v < 0 else ""
    return f"{sign}\\frac{{{abs(v.numerator)}}}{{{v.denominator}}}"


def corpus_cases() -> List[dict]:
    """The whole kind corpus: suite facts + hand-written kinds + benchmark-derived kinds."""
    return suite_cases() + kind_cases() + benchmark_kind_cases()
