"""Is a predicted answer equivalent to the gold answer?

Two stages:

* ``quick_verdict`` - string and literal-number rules only (no sympy). It settles most
  typical answers and is safe and cheap, so the grader runs it in the parent process.
* ``is_equivalent`` - ``quick_verdict``, then the structural/symbolic comparison through the safe
  parser (``parser.parse_answer``) and sympy. It has no time bound of its own: the grader runs it
  inside killable worker processes.

Number rules (``normalize.rationals_equal``): exact rationals compare exactly; a gold written as a
decimal accepts an exact prediction that rounds to it; a prediction written as a decimal matches a
non-terminating or irrational gold within relative 1e-6; two exact irrational values within
relative 1e-40 (50-digit evaluation). Expressions with free symbols compare by evaluation at
fixed pseudo-random points (relative 1e-40, or 1e-6 with decimals).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from typing import List, Optional

from .normalize import (MAX_SYMBOLIC_CHARS, Normalized, decimal_comma, literal_number,
                        multiple_choice_letter, normalize, numbers_equal_with_percent, rationals_equal)

_MC_GOLD_RE = re.compile(r"\(?([A-E])\)?|\(([A-E])\)\s.*|([A-E])\s+[A-Z][a-z].*|([A-E])[.)]\s.*")
_SUBSCRIPT_RE = re.compile(r"_\{[^{}]*\}|_\w")
_TOP_EQ_RE = re.compile(r"(?<![<>!\\])=(?!=)")


def gold_choice(gold: str) -> Optional[str]:
    """The letter of a multiple-choice gold (``C``, ``(C)``, ``(D) Alina``, ``C Cecile``), or None."""
    m = _MC_GOLD_RE.fullmatch(normalize(gold).text)
    if not m:
        return None
    return next(x for x in m.groups() if x)


def _unlabel_text(key: str) -> str:
    """``(p,q)=(3,2)`` -> ``(3,2)``: a single ``=`` whose left side has no number outside
    subscripts is a label; ``x+1=3`` is an equation and stays."""
    parts = _TOP_EQ_RE.split(key)
    if len(parts) != 2 or re.search(r"[<>]|\\(?:le|ge|ne)(?![a-z])", key):
        return key
    lhs, rhs = parts
    if not rhs or re.search(r"\d", _SUBSCRIPT_RE.sub("", lhs)) or not re.search(r"[A-Za-z]", lhs):
        return key
    if "," in lhs and not lhs.startswith("("):
        return key  # "a=4,b=5" style lists are handled item by item by the symbolic stage
    return rhs


def _numbers_verdict(pkey: str, gkey: str, np_: Normalized, ng: Normalized) -> Optional[bool]:
    # a decimal comma (2,74) is read only against a decimal written with as many digits
    # (2.74); otherwise "1,3" or "-3,0" is a list of two answers
    lg, lp = literal_number(gkey), literal_number(pkey)
    if lg is None and lp is not None and lp.decimals:
        lg = decimal_comma(ng.text)
        lg = lg if lg is not None and lg.decimals == lp.decimals else None
    if lp is None and lg is not None and lg.decimals:
        lp = decimal_comma(np_.text)
        lp = lp if lp is not None and lp.decimals == lg.decimals else None
    if lg is None or lp is None:
        return None
    return numbers_equal_with_percent(lp.value, lg.value, lp.decimals, lg.decimals,
                                      np_.percent, ng.percent)


def quick_verdict(pred: str, gold: str) -> Optional[bool]:
    """True/False when string and literal-number rules decide, None when sympy is needed."""
    if pred is None or gold is None:
        return False
    np_, ng = normalize(pred), normalize(gold)
    if not np_.key or not ng.key:
        return np_.key == ng.key and bool(np_.key)
    if np_.key == ng.key:
        return True
    letter = gold_choice(gold)
    if letter is not None:
        return multiple_choice_letter(np_) == letter
    pkey, gkey = np_.key, ng.key
    if "=" not in gkey:
        pkey = _unlabel_text(pkey)
    if "=" not in pkey:
        gkey = _unlabel_text(gkey)
    if pkey == gkey:
        return True
    return _numbers_verdict(pkey, gkey, np_, ng)


def is_equivalent(predicted: str, gold: str) -> bool:
    """Whether ``predicted`` is a correct answer for ``gold``. In-process, no time bound."""
    q = quick_verdict(predicted, gold)
    if q is not None:
        return q
    return symbolic_equal(normalize(predicted), normalize(gold))


# --------------------------------------------------------------------------------------------
# Symbolic stage (imports sympy lazily so that the fast path never pays for it)

_TEXT = "text"


@lru_cache(maxsize=8192)
def _parse(text: str):
    """Parse tree of a normalised answer; a text node for words; None when unparseable."""
    from .parser import NotMath, Node, ParseError, parse_answer
    if len(text) > MAX_SYMBOLIC_CHARS:
        return None
    try:
        return parse_answer(text)
    except NotMath:
        return Node(_TEXT, text=text.replace(" ", "").lower())
    except (ParseError, ValueError, TypeError, ArithmeticError, AttributeError, RecursionError,
            MemoryError, IndexError, KeyError):
        return None


@dataclass(frozen=True)
class _Ctx:
    pred_percent: bool
    gold_percent: bool


def symbolic_equal(np_: Normalized, ng: Normalized) -> bool:
    g = _parse(ng.text)
    if g is None:
        return False
    p = _parse(np_.text)
    if p is None:
        return False
    try:
        return _compare(p, g, _Ctx(np_.percent, ng.percent))
    except (ValueError, TypeError, ArithmeticError, AttributeError, RecursionError, IndexError,
            KeyError):
        return False


_REL_KINDS = ("rel", "chain", "approx")
_MIRROR = {"<": ">", ">": "<", "<=": ">=", ">=": "<=", "=": "=", "!=": "!="}


def _constant(node) -> bool:
    return node.kind == "expr" and not node.expr.free_symbols


def _readings(node, ctx: "_Ctx", gold: bool = False) -> List:
    """What a relation answer says when compared with a gold that is not a relation:

    * ``x = 3``, ``(p,q) = (3,2)``, ``2 = x``: the side that is not a label;
    * ``2 + 3 = 5`` (a constant on the left) and chains ``x = 5+5+1 = 11``: the last side;
    * ``x \\ge 5``, ``-x > -1``, ``0 < f(x) < 1``: the interval it describes;
    * ``\\frac{\\sqrt3}{3} \\approx 0.577``: the exact side, and the decimal when it is close to it.
    """
    from .parser import Node
    if node.kind == "approx":
        exact, approx = node.items
        out = [exact] + (_readings(exact, ctx, gold) if exact.kind in _REL_KINDS else [])
        if approx.kind == "expr" and (exact.label or _close_enough(exact, approx)):
            out.append(approx)   # x \approx 11, or a decimal close to the exact side
        return out
    if node.kind == "chain":
        if all(op == "=" for op in node.ops):
            first, last = node.items[0], node.items[-1]
            return [last] if not first.label else [last, Node("rel", open="=", items=[first, last])]
        iv = _chain_interval(node)
        return [iv] if iv is not None else []
    lhs, rhs = node.items
    if node.open == "=":
        if lhs.label and not rhs.label:
            return [rhs]
        if rhs.label and not lhs.label:
            return [lhs]
        if _constant(lhs) and not gold:   # "2 + 3 = 5": the answer is the last side; a gold
            return [rhs]                   # "7 = 11a + c" is an equation to match
        return []
    iv = _rel_interval(node)
    return [iv] if iv is not None else []


def _close_enough(exact, approx) -> bool:
    """The decimal after ``\\approx`` is within 1% of the exact side (not an unrelated number)."""
    e = exact
    if e.kind == "chain":
        e = e.items[-1]
    elif e.kind == "rel":
        e = e.items[1]
    if e.kind != "expr" or e.expr.free_symbols or approx.expr.free_symbols:
        return False
    va, vb = _numeric(e.expr), _numeric(approx.expr)
    if va is None or vb is None:
        return False
    return _close(va, vb, 0.01, 1e-12)


def _interval(lo, lo_open: bool, hi, hi_open: bool):
    import sympy
    from .parser import Node
    lo_n = Node("expr", expr=lo) if not isinstance(lo, Node) else lo
    hi_n = Node("expr", expr=hi) if not isinstance(hi, Node) else hi
    return Node("brack", open="(" if lo_open or lo_n.expr == -sympy.oo else "[",
                close=")" if hi_open or hi_n.expr == sympy.oo else "]", items=[lo_n, hi_n])


def _rel_interval(node):
    """``x >= 5`` -> ``[5, oo)``; ``-x > -1`` -> ``(-oo, 1)``: one variable, linear, constant bound."""
    import sympy
    op = node.open
    if op not in ("<", ">", "<=", ">="):
        return None
    lhs, rhs = node.items
    if lhs.kind != "expr" or rhs.kind != "expr":
        return None
    d = sympy.Add(lhs.expr, sympy.Mul(-1, rhs.expr))
    syms = d.free_symbols
    if len(syms) != 1:
        return None
    x = next(iter(syms))
    try:
        poly = sympy.Poly(d, x)
    except (sympy.PolynomialError, ValueError, TypeError):
        return None
    if poly.degree() != 1:
        return None
    a, b = poly.all_coeffs()
    if not (a.is_number and b.is_number) or a == 0:
        return None
    bound = -b / a
    if a.is_negative:
        op = _MIRROR[op]
    if op in ("<", "<="):   # x < bound
        return _interval(-sympy.oo, True, bound, op == "<")
    return _interval(bound, op == ">", sympy.oo, True)


def _chain_interval(node):
    """``a < expr <= b`` (constant ends, one direction) -> ``(a, b]``."""
    if len(node.items) != 3 or not _constant(node.items[0]) or not _constant(node.items[2]) \
            or _constant(node.items[1]):
        return None
    o1, o2 = node.ops
    if o1 in ("<", "<=") and o2 in ("<", "<="):
        return _interval(node.items[0], o1 == "<", node.items[2], o2 == "<")
    if o1 in (">", ">=") and o2 in (">", ">="):
        return _interval(node.items[2], o2 == ">", node.items[0], o1 == ">")
    return None


def _compare(p, g, ctx: _Ctx) -> bool:
    if p.kind == _TEXT or g.kind == _TEXT:
        return p.kind == g.kind == _TEXT and p.text == g.text
    if p.kind == "expr" and g.kind == "expr":
        return _expr_equal(p, g, ctx)
    if p.kind in _REL_KINDS and g.kind in _REL_KINDS:
        if p.kind == "rel" and g.kind == "rel" and _rel_equal(p, g, ctx):
            return True
        if p.kind == "approx" or g.kind == "approx":
            return any(_compare(a, b, ctx) for a in _rel_forms(p, ctx) for b in _rel_forms(g, ctx))
        for a in _rel_forms(p, ctx):
            for b in _rel_forms(g, ctx):
                if (a is not p or b is not g) and _compare(a, b, ctx):
                    return True
        return False
    if p.kind in _REL_KINDS:
        return any(_compare(r, g, ctx) for r in _readings(p, ctx))
    if g.kind in _REL_KINDS:
        return any(_compare(p, r, ctx) for r in _readings(g, ctx, gold=True))
    unordered = ("list", "set")
    if p.kind in unordered and g.kind in unordered:
        return _unordered_equal(p.items, g.items, ctx)
    if p.kind == "brack" and g.kind == "brack":
        return (p.open == g.open and p.close == g.close
                and _ordered_equal(p.items, g.items, ctx))
    # a tuple written without its parentheses
    if p.kind == "list" and g.kind == "brack" and g.open == "(" and g.close == ")":
        return _ordered_equal(p.items, g.items, ctx)
    if g.kind == "list" and p.kind == "brack" and p.open == "(" and p.close == ")":
        return _ordered_equal(p.items, g.items, ctx)
    if p.kind == "union" and g.kind == "union":
        return _unordered_equal(p.items, g.items, ctx)
    if p.kind == "ratio" and g.kind == "ratio":
        return _ordered_equal(p.items, g.items, ctx)
    if p.kind == "matrix" and g.kind == "matrix":
        if len(p.rows) != len(g.rows) or len(p.rows[0]) != len(g.rows[0]):
            return False
        return all(_compare(a, b, ctx) for ra, rb in zip(p.rows, g.rows) for a, b in zip(ra, rb))
    return False


def _rel_forms(node, ctx: _Ctx) -> List:
    """A relation compared with a relation: itself (chains as their label-first relation), or
    the interval it describes."""
    if node.kind == "approx":
        return _readings(node, ctx)
    if node.kind == "chain":
        return [r for r in _readings(node, ctx) if r.kind in ("rel", "brack")]
    out = [node]
    iv = _rel_interval(node)
    if iv is not None:
        out.append(iv)
    return out


def _ordered_equal(ps: List, gs: List, ctx: _Ctx) -> bool:
    return len(ps) == len(gs) and all(_compare(a, b, ctx) for a, b in zip(ps, gs))


def _node_key(node) -> str:
    """A structural key: equal keys are the same written answer (used to drop repeats)."""
    if node.kind == "expr":
        return "e:" + str(node.expr)
    inner = "|".join(_node_key(x) for x in node.items)
    rows = "|".join(_node_key(x) for r in node.rows for x in r)
    return f"{node.kind}:{node.open}:{node.close}:{node.text}:{inner}:{rows}"


def _dedup(items: List) -> List:
    seen, out = set(), []
    for x in items:
        k = _node_key(x)
        if k not in seen:
            seen.add(k)
            out.append(x)
    return out


def _unordered_equal(ps: List, gs: List, ctx: _Ctx) -> bool:
    """Order does not matter. Repeats in the prediction do not matter either, unless the gold
    itself repeats an item (then multiplicity counts: ``1, 1, 2`` is not ``1, 2, 2``)."""
    if len(_dedup(gs)) == len(gs):
        ps = _dedup(ps)
    if len(ps) != len(gs):
        return False
    left = list(gs)
    for a in ps:
        for k, b in enumerate(left):
            if _compare(a, b, ctx):
                del left[k]
                break
        else:
            return False
    return True


def _rel_equal(p, g, ctx: _Ctx) -> bool:
    pl, pr = p.items
    gl, gr = g.items
    if p.open == g.open and _compare(pl, gl, ctx) and _compare(pr, gr, ctx):
        return True
    if _MIRROR[p.open] == g.open and _compare(pl, gr, ctx) and _compare(pr, gl, ctx):
        return True
    if p.open == g.open == "=" and pl.label and gl.label and not pr.label and not gr.label \
            and _compare(pr, gr, ctx):
        return True   # W(x) = 1 and W(n) = 1: the labels' names do not matter
    if p.open == g.open == "=" and all(n.kind == "expr" for n in (pl, pr, gl, gr)):
        # the same equation up to a constant factor: (pl - pr) = c (gl - gr), c != 0
        import sympy
        dp = sympy.Add(pl.expr, sympy.Mul(-1, pr.expr))
        dg = sympy.Add(gl.expr, sympy.Mul(-1, gr.expr))
        return _proportional(dp, dg)
    return False


# --------------------------------------------------------------------------------------------
# Numbers and expressions

_POINTS = ("0.7341", "1.3917", "2.1529", "-0.5813", "0.4267", "1.8832", "-1.2691", "2.6173",
           "0.9358", "3.3071", "-2.4419", "1.1173")
_PREC = 50
_EXACT_REL = 1e-40    # both sides exact: agree to 40 digits (50-digit evaluation)
_DECIMAL_REL = 1e-6  # a side written as a decimal


def _to_mpc(v):
    """A sympy numeric value -> mpmath mpc, or None when not a finite number."""
    import mpmath
    import sympy
    if v.free_symbols or v.has(sympy.zoo, sympy.nan, sympy.oo, -sympy.oo):
        return None
    re_, im_ = v.as_real_imag()
    out = []
    with mpmath.workprec(200):
        for part in (re_, im_):
            part = sympy.N(part, _PREC)
            if not part.is_Number or not part.is_finite:
                return None
            out.append(mpmath.mpf(sympy.Float(part, _PREC)._mpf_))
        return mpmath.mpc(out[0], out[1])


def _close(a, b, rel: float, abs_tol: float = 1e-25) -> bool:
    import mpmath
    with mpmath.workprec(200):
        return abs(a - b) <= rel * max(abs(a), abs(b)) + abs_tol


def _numeric(expr, subs=None):
    import sympy
    try:
        v = expr.evalf(_PREC, subs=subs) if subs else sympy.N(expr, _PREC)
        return _to_mpc(v)
    except (ValueError, TypeError, ArithmeticError, AttributeError, RecursionError):
        return None


def _expr_equal(p, g, ctx: _Ctx) -> bool:
    a, b = p.expr, g.expr
    if a == b and not (ctx.pred_percent ^ ctx.gold_percent):
        return True
    if not a.free_symbols and not b.free_symbols:
        pairs = [(a, b)]
        if ctx.gold_percent and not ctx.pred_percent:
            pairs.append((a, b / 100))
        elif ctx.pred_percent and not ctx.gold_percent:
            pairs.append((a / 100, b))
        if a == b:
            return True
        return any(_const_equal(x, y, p.meta.decimals, g.meta.decimals) for x, y in pairs)
    import sympy
    diff = sympy.Add(a, sympy.Mul(-1, b))
    if diff == 0:
        return True
    if not diff.free_symbols and diff.is_Rational:   # x + 1/10^20 vs x
        return False
    decimals = p.meta.decimals is not None or g.meta.decimals is not None
    return _points_equal(a, b, _DECIMAL_REL if decimals else _EXACT_REL)


def _const_equal(a, b, pdec: Optional[int], gdec: Optional[int]) -> bool:
    if a.is_Rational and b.is_Rational:
        return rationals_equal(Fraction(int(a.p), int(a.q)), Fraction(int(b.p), int(b.q)), pdec, gdec)
    if a == b:
        return True
    if not (a.is_finite is not False and b.is_finite is not False):
        return False
    va, vb = _numeric(a), _numeric(b)
    if va is None or vb is None:
        return False
    if gdec is not None and pdec is None:
        return _close(va, vb, 0.0, 0.5 * 10.0 ** (-gdec) * (1 + 1e-9))
    if pdec is not None or gdec is not None:
        return _close(va, vb, _DECIMAL_REL)
    return _close(va, vb, _EXACT_REL, 1e-45)


def _subs_points(symbols):
    import sympy
    syms = sorted(symbols, key=lambda s: s.name)
    for k in range(len(_POINTS)):
        yield {s: sympy.Float(_POINTS[(k * 5 + j * 7) % len(_POINTS)], _PREC) for j, s in enumerate(syms)}


def _points_equal(a, b, rel: float) -> bool:
    symbols = a.free_symbols | b.free_symbols
    if len(symbols) > 12:
        return False
    valid = 0
    for subs in _subs_points(symbols):
        va, vb = _numeric(a, subs), _numeric(b, subs)
        if va is None or vb is None:
            continue
        if not _close(va, vb, rel, 1e-45):
            return False
        valid += 1
        if valid >= 5:
            return True
    if valid >= 2:
        return True
    import sympy
    return sympy.simplify(a - b) == 0


def _proportional(dp, dg) -> bool:
    symbols = dp.free_symbols | dg.free_symbols
    if not symbols or len(symbols) > 12:
        return False
    ratio = None
    valid = 0
    for subs in _subs_points(symbols):
        vp, vg = _numeric(dp, subs), _numeric(dg, subs)
        if vp is None or vg is None or abs(vg) < 1e-30:
            continue
        r = vp / vg
        if abs(r) < 1e-30:
            return False
        if ratio is None:
            ratio = r
        elif not _close(r, ratio, 1e-30, 1e-45):
            return False
        valid += 1
        if valid >= 5:
            return True
    return valid >= 3
