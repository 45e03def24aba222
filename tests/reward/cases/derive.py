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
