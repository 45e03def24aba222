"""A small, safe parser from (normalised) LaTeX / plain math to sympy objects.

Model output is untrusted, so nothing here calls ``eval``, ``sympify`` or ``parse_expr``: a
tokenizer and a recursive-descent parser build sympy objects directly from an allow-list of
constructors (numbers, symbols, + - * / ^, roots, a few functions and constants). Size guards
stop the parse before anything large is built: token count, nesting depth, integer literal
length, and the bit size of exact powers and factorials.

The parse of a whole answer is a small tree of ``Node`` objects (expression, list, set, tuple or
interval, union, relation, matrix, text) that ``equivalence`` compares.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import List, Optional

import sympy
from sympy import Integer, Rational

MAX_TOKENS = 1_500
MAX_DEPTH = 60
MAX_INT_DIGITS = 400
MAX_POW_BITS = 20_000          # exact numeric powers larger than this many bits are refused
MAX_FACTORIAL = 1_000
MAX_LIST_ITEMS = 64


class ParseError(ValueError):
    """The text is not in the supported math subset."""


class NotMath(ParseError):
    """The text looks like words, not math: compare it as text."""


class TooBig(ParseError):
    """A size guard refused the input."""


# --------------------------------------------------------------------------------------------
# Tokens

@dataclass(frozen=True)
class Tok:
    kind: str   # NUM, ID (single letter), FUNC, CMD, OP, BEGIN, END, ROWSEP
    text: str


_FUNCS = {
    "sin": sympy.sin, "cos": sympy.cos, "tan": sympy.tan, "sec": sympy.sec, "csc": sympy.csc,
    "cot": sympy.cot, "arcsin": sympy.asin, "arccos": sympy.acos, "arctan": sympy.atan,
    "sinh": sympy.sinh, "cosh": sympy.cosh, "tanh": sympy.tanh, "ln": sympy.log, "log": sympy.log,
    "exp": sympy.exp, "lg": None,
}
_INVERSE = {"sin": sympy.asin, "cos": sympy.acos, "tan": sympy.atan}
_GREEK = {
    "alpha", "beta", "gamma", "delta", "epsilon", "varepsilon", "zeta", "eta", "theta", "vartheta",
    "iota", "kappa", "lambda", "mu", "nu", "xi", "rho", "sigma", "tau", "upsilon", "phi", "varphi",
    "chi", "psi", "omega", "Gamma", "Delta", "Theta", "Lambda", "Xi", "Sigma", "Phi", "Psi", "Omega",
}
_REL_CMDS = {"le": "<=", "ge": ">=", "lt": "<", "gt": ">", "ne": "!=", "approx": "~"}
_PLAIN_OPS = "+-*/^_!,()[]{}|=<>&':"
_ENV_RE = re.compile(r"\\(begin|end)\s*\{\s*([A-Za-z]+\*?)\s*\}")
_NUM_RE = re.compile(r"(?:\d+(?:\.\d*)?|\.\d+)")
_SCI_RE = re.compile(r"[eE][+-]?\d{1,4}(?![A-Za-z0-9])")
_CMD_RE = re.compile(r"\\([A-Za-z]+|[{}|\\])")
_MATRIX_ENVS = {"matrix", "pmatrix", "bmatrix", "Bmatrix", "vmatrix", "smallmatrix", "array"}


def tokenize(s: str) -> List[Tok]:
    toks: List[Tok] = []
    i, n = 0, len(s)
    while i < n:
        if len(toks) > MAX_TOKENS:
            raise TooBig("too many tokens")
        c = s[i]
        if c.isspace():
            i += 1
            continue
        if c.isdigit() or (c == "." and i + 1 < n and s[i + 1].isdigit()):
            m = _NUM_RE.match(s, i)
            text = m.group(0)
            j = m.end()
            sm = _SCI_RE.match(s, j)
            if sm:  # 1.5e-5 (only when the 'e' is followed by an exponent and no letter)
                text += sm.group(0)
                j = sm.end()
            toks.append(Tok("NUM", text))
            i = j
            continue
        if c.isalpha() and c.isascii():
            j = i
            while j < n and s[j].isascii() and s[j].isalpha():
                j += 1
            word = s[i:j]
            i = j
            _word_tokens(word, toks)
            continue
        if c == "\\":
            m = _ENV_RE.match(s, i)
            if m:
                toks.append(Tok("BEGIN" if m.group(1) == "begin" else "END", m.group(2)))
                i = m.end()
                if m.group(1) == "begin" and m.group(2) == "array":  # skip column spec {cc}
                    am = re.match(r"\s*\{[^{}]*\}", s[i:])
                    if am:
                        i += am.end()
                continue
            m = _CMD_RE.match(s, i)
            if not m:
                raise ParseError(f"bad command at {i}")
            name = m.group(1)
            i = m.end()
            if name == "\\":
                toks.append(Tok("ROWSEP", "\\\\"))
            elif name in ("{", "}", "|"):
                toks.append(Tok("OP", "\\" + name))
            elif name in _FUNCS:
                toks.append(Tok("FUNC", name))
            else:
                toks.append(Tok("CMD", name))
            continue
        if c in _PLAIN_OPS:
            toks.append(Tok("OP", c))
            i += 1
            continue
        raise ParseError(f"unexpected character {c!r}")
    return toks


def _word_tokens(word: str, toks: List[Tok]) -> None:
    """Split a run of letters: function names, else single-letter symbols (short runs only)."""
    if word in _FUNCS:
        toks.append(Tok("FUNC", word))
        return
    for f in ("arcsin", "arccos", "arctan", "sinh", "cosh", "tanh", "sin", "cos", "tan", "log",
              "ln", "exp", "sqrt"):
        if word.startswith(f) and len(word) - len(f) <= 2:
            toks.append(Tok("FUNC", f) if f != "sqrt" else Tok("CMD", "sqrt"))
            for ch in word[len(f):]:
                toks.append(Tok("ID", ch))
            return
    if word == "pi":
        toks.append(Tok("CMD", "pi"))
        return
    if word in ("oo", "inf", "infty", "infinity"):
        toks.append(Tok("CMD", "infty"))
        return
    if len(word) >= 3:
        raise NotMath(word)
    for ch in word:
        toks.append(Tok("ID", ch))


# --------------------------------------------------------------------------------------------
# Answer tree

@dataclass
class Meta:
    decimals: Optional[int] = None   # most digits after a decimal point among the literals


@dataclass
class Node:
    kind: str                      # expr, list, set, brack, union, rel, matrix, text
    expr: object = None            # sympy expression (expr)
    meta: Meta = field(default_factory=Meta)
    items: List["Node"] = field(default_factory=list)
    open: str = ""                 # brack: "(" or "[" ; rel: operator
    close: str = ""
    rows: List[List["Node"]] = field(default_factory=list)
    text: str = ""
    ops: List[str] = field(default_factory=list)   # chain: the relation operators, left to right
    label: bool = False            # written with no number outside subscripts (x, (p,q), |AB|)


_OPENERS = ("(", "[", "{", "\\{")
_CLOSERS = (")", "]", "}", "\\}")


def _nesting(t: Tok, envs: bool = True) -> int:
    """+1 for an opening bracket (and ``\\begin`` when ``envs``), -1 for a closing one (``\\end``), else 0."""
    if t.kind == "OP":
        return 1 if t.text in _OPENERS else -1 if t.text in _CLOSERS else 0
    if envs and t.kind in ("BEGIN", "END"):
        return 1 if t.kind == "BEGIN" else -1
    return 0


def _split_top(toks: List[Tok], sep_pred) -> List[List[Tok]]:
    """Split a token list at depth-0 tokens matching ``sep_pred``."""
    parts: List[List[Tok]] = [[]]
    depth = 0
    for t in toks:
        depth += _nesting(t)
        if depth == 0 and sep_pred(t):
            parts.append([])
        else:
            parts[-1].append(t)
    return parts


def _wrapped(toks: List[Tok]) -> bool:
    """True when toks[0] is an opening bracket closed exactly by toks[-1]."""
    if len(toks) < 2:
        return False
    depth = 0
    for k, t in enumerate(toks):
        step = _nesting(t, envs=False)
        depth += step
        if step < 0 and depth == 0:
            return k == len(toks) - 1
    return False


def parse_answer(text: str) -> Node:
    """Parse a normalised answer into a ``Node`` tree. Raises ``ParseError`` subclasses."""
    toks = tokenize(text)
    if not toks:
        raise ParseError("empty")
    return _answer(toks, 0)


def _label_like(toks: List[Tok]) -> bool:
    """No number outside subscripts, and at least one letter: a name such as ``x``, ``(p,q)``,
    ``a_{37}``, ``|AB|``, ``m+n``."""
    letters = False
    skip = 0
    depth = 0
    for k, t in enumerate(toks):
        if skip:
            if t.kind == "OP" and t.text == "{":
                depth += 1
            elif t.kind == "OP" and t.text == "}":
                depth -= 1
            if depth <= 0:
                skip = 0
            continue
        if t.kind == "OP" and t.text == "_":
            skip = 1
            depth = 0
            continue
        if t.kind == "NUM":
            return False
        if t.kind in ("ID", "FUNC") or (t.kind == "CMD" and t.text in _GREEK):
            letters = True
        if t.kind in ("BEGIN", "END"):
            return False
    return letters


def _answer(toks: List[Tok], depth: int) -> Node:
    node = _answer_node(toks, depth)
    node.label = _label_like(toks)
    return node


def _answer_node(toks: List[Tok], depth: int) -> Node:
    if depth > 8:
        raise TooBig("answer nesting")
    if not toks:
        raise ParseError("empty item")
    if len(toks) == 1 and toks[0].kind == "CMD" and toks[0].text == "emptyset":
        return Node("set", items=[])
    # union of sets / intervals
    parts = _split_top(toks, lambda t: t.kind == "CMD" and t.text == "cup")
    if len(parts) > 1:
        return Node("union", items=[_answer(p, depth + 1) for p in parts])
    # matrix
    if toks[0].kind == "BEGIN" and toks[-1].kind == "END" and toks[0].text.rstrip("*") in _MATRIX_ENVS:
        return _matrix(toks[1:-1], depth)
    # \{ a, b \}
    if toks[0].text == "\\{" and toks[-1].text == "\\}" and _wrapped(toks):
        inner = toks[1:-1]
        items = [p for p in _split_top(inner, lambda t: t.kind == "OP" and t.text == ",")]
        if items == [[]]:
            return Node("set", items=[])
        return Node("set", items=[_answer(p, depth + 1) for p in _cap(items)])
    # tuple / interval: (a, b), [a, b), ...
    if toks[0].text in ("(", "[") and toks[-1].text in (")", "]") and _wrapped(toks):
        inner = toks[1:-1]
        items = _split_top(inner, lambda t: t.kind == "OP" and t.text == ",")
        if len(items) > 1:
            return Node("brack", open=toks[0].text, close=toks[-1].text,
                        items=[_answer(p, depth + 1) for p in _cap(items)])
    # bare list: a, b, c
    items = _split_top(toks, lambda t: t.kind == "OP" and t.text == ",")
    if len(items) > 1:
        return Node("list", items=[_answer(p, depth + 1) for p in _cap(items)])
    # relations: x = 3, y \le 2
    rel_parts = _split_top(toks, _is_rel)
    if len(rel_parts) > 1:
        ops = [_rel_op(t) for t in _top_level(toks) if _is_rel(t)]
        if "~" in ops:  # exact \approx decimal: both readings, compared by equivalence
            k = ops.index("~")
            cut = _nth_top_rel(toks, k)
            return Node("approx", items=[_answer(toks[:cut], depth + 1), _answer(toks[cut + 1:], depth + 1)])
        if len(rel_parts) == 2:
            return Node("rel", open=ops[0],
                        items=[_answer(rel_parts[0], depth + 1), _answer(rel_parts[1], depth + 1)])
        # chains like a = b = 3 or 0 < x < 1: every side, compared by equivalence
        return Node("chain", ops=ops, items=[_answer(p, depth + 1) for p in _cap(rel_parts)])
    ratio = _split_top(toks, lambda t: t.kind == "OP" and t.text == ":")
    if len(ratio) > 1:
        return Node("ratio", items=[_answer(p, depth + 1) for p in _cap(ratio)])
    # a \pm b -> list of two
    pm = _split_top(toks, lambda t: t.kind == "CMD" and t.text in ("pm", "mp"))
    if len(pm) == 2 and pm[1]:
        left = pm[0]
        plus = left + [Tok("OP", "+"), Tok("OP", "(")] + pm[1] + [Tok("OP", ")")]
        minus = left + [Tok("OP", "-"), Tok("OP", "(")] + pm[1] + [Tok("OP", ")")]
        return Node("list", items=[_expr_node(plus), _expr_node(minus)])
    return _expr_node(toks)


def _cap(items):
    if len(items) > MAX_LIST_ITEMS:
        raise TooBig("too many items")
    if any(not p for p in items):
        raise ParseError("empty item")
    return items


def _top_level(toks: List[Tok]):
    """The tokens outside any bracket or environment (the depth `_split_top` splits at)."""
    depth = 0
    for t in toks:
        step = _nesting(t)
        depth += step
        if step == 0 and depth == 0:
            yield t


def _nth_top_rel(toks: List[Tok], n: int) -> int:
    """Index in ``toks`` of the n-th top-level relation operator."""
    depth = 0
    seen = 0
    for k, t in enumerate(toks):
        step = _nesting(t)
        depth += step
        if step == 0 and depth == 0 and _is_rel(t):
            if seen == n:
                return k
            seen += 1
    raise ParseError("relation not found")


def _is_rel(t: Tok) -> bool:
    return (t.kind == "OP" and t.text in ("=", "<", ">")) or (t.kind == "CMD" and t.text in _REL_CMDS)


def _rel_op(t: Tok) -> str:
    return t.text if t.kind == "OP" else _REL_CMDS[t.text]


def _matrix(toks: List[Tok], depth: int) -> Node:
    rows = _split_top(toks, lambda t: t.kind == "ROWSEP")
    if rows and not rows[-1]:
        rows = rows[:-1]
    out = []
    for r in rows:
        cells = _split_top(r, lambda t: t.kind == "OP" and t.text == "&")
        out.append([_answer(c, depth + 1) for c in _cap(cells)])
    if not out or len(out) > MAX_LIST_ITEMS or len({len(r) for r in out}) != 1:
        raise ParseError("ragged matrix")
    return Node("matrix", rows=out)


def _expr_node(toks: List[Tok]) -> Node:
    p = _ExprParser(toks)
    e = p.parse()
    return Node("expr", expr=e, meta=Meta(decimals=p.decimals))


# --------------------------------------------------------------------------------------------
# Expressions

def _bits(n: int) -> int:
    return max(1, abs(int(n)).bit_length())


def check_power_size(base, exp) -> None:
    """Refuse a constant power whose value would need more than ``MAX_POW_BITS`` bits of magnitude
    (``|exp| * log2|base|``), estimated from 15-digit values of base and exponent (each already
    bounded when it was parsed): towers such as ``e^{e^{e^{100}}}`` or ``e^{e^{e^3}}``, which sympy
    would otherwise evaluate (or floor) digit by digit without end. A value that does not fit a float
    is refused too."""
    import math

    try:
        b = complex(sympy.N(base, 15))
        e = complex(sympy.N(exp, 15))
    except (TypeError, ValueError, OverflowError, ArithmeticError, AttributeError, RecursionError):
        raise TooBig("power cannot be sized") from None
    if not all(math.isfinite(x) for x in (b.real, b.imag, e.real, e.imag)):
        raise TooBig("power too large")
    if abs(b) == 0 or abs(b) == 1:
        return
    if abs(e) * abs(math.log2(abs(b))) > MAX_POW_BITS:
        raise TooBig("power too large")


def safe_pow(base, exp):
    """``base**exp`` after checking that an exact numeric result stays small, and that a constant
    power's magnitude does (`check_power_size`)."""
    if exp.is_Rational and base.is_Rational:
        if base in (0, 1, -1):
            return sympy.Pow(base, exp)
        size = max(_bits(base.p), _bits(base.q))
        if abs(exp) * size > MAX_POW_BITS:
            raise TooBig("power too large")
    elif exp.is_Rational and abs(exp) > (10 ** 4 if base.is_number else 10 ** 9):
        raise TooBig("exponent too large")
    elif base.is_number and exp.is_number and not exp.is_Rational:
        check_power_size(base, exp)
    return sympy.Pow(base, exp)


def safe_factorial(n):
    if n.is_Integer:
        if n > MAX_FACTORIAL:
            raise TooBig("factorial too large")
        if n < 0:
            raise ParseError("negative factorial")
    return sympy.factorial(n)


_ATOM_START_OPS = {"(", "{", "\\{"}


class _ExprParser:
    def __init__(self, toks: List[Tok]):
        if len(toks) > MAX_TOKENS:
            raise TooBig("too many tokens")
        self.toks = toks
        self.i = 0
        self.depth = 0
        self.abs_depth = 0
        self.decimals: Optional[int] = None

    # helpers
    def peek(self, k: int = 0) -> Optional[Tok]:
        j = self.i + k
        return self.toks[j] if j < len(self.toks) else None

    def next(self) -> Tok:
        t = self.peek()
        if t is None:
            raise ParseError("unexpected end")
        self.i += 1
        return t

    def accept(self, kind: str, text: Optional[str] = None) -> bool:
        t = self.peek()
        if t is not None and t.kind == kind and (text is None or t.text == text):
            self.i += 1
            return True
        return False

    def expect(self, kind: str, text: str) -> None:
        if not self.accept(kind, text):
            raise ParseError(f"expected {text}")

    def enter(self) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise TooBig("nesting too deep")

    # grammar
    def parse(self):
        e = self.additive()
        if self.peek() is not None:
            raise ParseError(f"trailing {self.peek().text!r}")
        return e

    def additive(self):
        self.enter()
        left = self.term()
        while True:
            t = self.peek()
            if t is not None and t.kind == "OP" and t.text in "+-":
                self.i += 1
                right = self.term()
                left = sympy.Add(left, right if t.text == "+" else sympy.Mul(-1, right))
            else:
                break
        self.depth -= 1
        return left

    def term(self):
        self.enter()
        left = self.unary()
        prev_num = self._last_was_num
        while True:
            t = self.peek()
            if t is None:
                break
            if (t.kind == "OP" and t.text in "*/") or (t.kind == "CMD" and t.text in ("cdot", "times", "div")):
                self.i += 1
                right = self.unary()
                if t.text in ("/", "div"):
                    left = sympy.Mul(left, safe_pow(right, Integer(-1)))
                else:
                    left = sympy.Mul(left, right)
                prev_num = self._last_was_num
            elif self._starts_atom(t):
                if t.kind == "NUM" and prev_num:
                    raise ParseError("two numbers side by side")
                right = self.power()
                left = sympy.Mul(left, right)
                prev_num = self._last_was_num
            else:
                break
        self.depth -= 1
        return left

    def _starts_atom(self, t: Tok) -> bool:
        if t.kind in ("NUM", "ID", "FUNC"):
            return True
        if t.kind == "OP":
            if t.text == "|":
                return self.abs_depth == 0
            return t.text in _ATOM_START_OPS
        if t.kind == "CMD":
            return t.text not in ("cdot", "times", "div", "pm", "mp", "cup", "rfloor", "rceil", "approx") \
                and t.text not in _REL_CMDS
        return False

    def unary(self):
        t = self.peek()
        if t is not None and t.kind == "OP" and t.text in "+-":
            self.i += 1
            self.enter()
            v = self.unary()
            self.depth -= 1
            return v if t.text == "+" else sympy.Mul(-1, v)
        return self.power()

    def power(self):
        self.enter()
        base = self.postfix()
        was_num = self._last_was_num
        if self.accept("OP", "^"):
            exp = self.exponent()
            base = safe_pow(base, exp)
            was_num = False
            while self.accept("OP", "!"):
                base = safe_factorial(base)
        self._last_was_num = was_num
        self.depth -= 1
        return base

    def exponent(self):
        t = self.peek()
        if t is not None and t.kind == "OP" and t.text == "{":
            return self.group()
        if t is not None and t.kind == "OP" and t.text in "+-":
            self.i += 1
            v = self.exponent()
            return v if t.text == "+" else sympy.Mul(-1, v)
        # x^2y means x^2 * y; right-associative towers a^b^c
        self.enter()
        v = self.postfix()
        if self.accept("OP", "^"):
            v = safe_pow(v, self.exponent())
        self.depth -= 1
        return v

    def postfix(self):
        v = self.atom()
        while self.accept("OP", "!"):
            v = safe_factorial(v)
            self._last_was_num = False
        return v

    def group(self):
        """``{ expr }``"""
        self.expect("OP", "{")
        v = self.additive()
        self.expect("OP", "}")
        return v

    def arg(self):
        """Argument of \\frac, \\sqrt: a braced group or a single atom."""
        t = self.peek()
        if t is not None and t.kind == "OP" and t.text == "{":
            return self.group()
        if t is not None and t.kind == "NUM":
            self.i += 1
            self._note_num(t.text)
            return self._number(t.text)
        return self.atom()

    def _note_num(self, text: str) -> None:
        if "." in text:
            mant = text.split("e")[0].split("E")[0]
            d = len(mant.split(".", 1)[1])
            m = re.search(r"[eE]([+-]?\d+)", text)
            if m:
                d = max(0, d - int(m.group(1)))
            self.decimals = d if self.decimals is None else max(self.decimals, d)

    def _number(self, text: str):
        mant, _, exp = text.replace("E", "e").partition("e")
        if len(mant) > MAX_INT_DIGITS:
            raise TooBig("number too long")
        v = Rational(mant) if "." in mant else Integer(int(mant))
        if exp:
            e = int(exp)
            if abs(e) > 400:
                raise TooBig("exponent too large")
            v = v * Rational(10) ** e
        return v

    def atom(self):
        self._last_was_num = False
        t = self.next()
        self.enter()
        try:
            return self._atom(t)
        finally:
            self.depth -= 1

    _last_was_num = False

    def _atom(self, t: Tok):
        if t.kind == "NUM":
            self._note_num(t.text)
            v = self._number(t.text)
            self._last_was_num = True
            return v
        if t.kind == "ID":
            return self._symbol(t.text)
        if t.kind == "OP":
            if t.text == "(":
                v = self.additive()
                self.expect("OP", ")")
                return v
            if t.text == "{":
                v = self.additive()
                self.expect("OP", "}")
                return v
            if t.text == "|":
                self.abs_depth += 1
                v = self.additive()
                self.abs_depth -= 1
                self.expect("OP", "|")
                return sympy.Abs(v)
            raise ParseError(f"unexpected {t.text!r}")
        if t.kind == "FUNC":
            return self._function(t.text)
        if t.kind == "CMD":
            return self._command(t.text)
        raise ParseError(f"unexpected {t.text!r}")

    def _symbol(self, name: str):
        if self.accept("OP", "_"):
            sub = self._subscript_text()
            return sympy.Symbol(f"{name}_{sub}")
        if name in getattr(self, "bound", ()):
            return sympy.Symbol(name)
        if name == "e":
            return sympy.E
        if name == "i":
            return sympy.I
        return sympy.Symbol(name)

    def _subscript_text(self) -> str:
        t = self.next()
        if t.kind == "OP" and t.text == "{":
            parts = []
            depth = 1
            while True:
                u = self.next()
                if u.kind == "OP" and u.text == "{":
                    depth += 1
                elif u.kind == "OP" and u.text == "}":
                    depth -= 1
                    if depth == 0:
                        break
                parts.append(u.text)
                if len(parts) > 20:
                    raise ParseError("long subscript")
            return "".join(parts)
        return t.text

    def _big_operator(self, name: str):
        """``\\sum_{k=a}^{b} term``: expanded when the bounds are integers (at most 1000 terms) or
        the term is a polynomial in the index; otherwise kept as an unevaluated sum."""
        self.expect("OP", "_")
        self.expect("OP", "{")
        t = self.next()
        if t.kind != "ID":
            raise ParseError("sum index")
        index = sympy.Symbol(t.text)
        self.bound = getattr(self, "bound", frozenset()) | {t.text}   # i, e: the index, not I, E
        self.expect("OP", "=")
        lo = self.additive()
        self.expect("OP", "}")
        self.expect("OP", "^")
        hi = self.exponent()
        body = self.term()
        cls = sympy.Sum if name == "sum" else sympy.Product
        if lo.is_Integer and hi.is_Integer:
            if hi - lo > 1000:
                raise TooBig("too many terms")
            return cls(body, (index, lo, hi)).doit()
        if name == "sum" and body.is_polynomial(index) and sympy.degree(body, index) <= 6:
            return sympy.expand(cls(body, (index, lo, hi)).doit())
        return cls(body, (index, lo, hi))

    def _function(self, name: str):
        if name == "lg":
            raise ParseError("lg")
        base = None
        if name == "log" and self.accept("OP", "_"):
            t = self.peek()
            if t is not None and t.kind == "OP" and t.text == "{":
                base = self.group()
            else:
                base = self.arg()
        power = None
        if self.accept("OP", "^"):
            power = self.exponent()
        argv = self._func_arg()
        fn = _FUNCS[name]
        if power is not None and power == -1 and name in _INVERSE:
            return _INVERSE[name](argv)
        if name in ("exp", "sinh", "cosh") and argv.is_number:
            check_power_size(sympy.E, argv)  # e^x grows like a power tower
        if base is not None:
            v = sympy.log(argv, base)
        else:
            v = fn(argv)
        if power is not None:
            v = safe_pow(v, power)
        return v

    def _func_arg(self):
        t = self.peek()
        if t is None:
            raise ParseError("missing function argument")
        if t.kind == "OP" and t.text in ("(", "{"):
            self.i += 1
            v = self.additive()
            self.expect("OP", ")" if t.text == "(" else "}")
            return v
        # \sin 2x: an implicit product of powers, without explicit operators
        self.enter()
        v = self.power()
        while True:
            u = self.peek()
            if u is None or u.kind == "FUNC" or not self._starts_atom(u) or (u.kind == "OP" and u.text == "("):
                break
            v = sympy.Mul(v, self.power())
        self.depth -= 1
        return v

    def _command(self, name: str):
        if name == "frac":
            num = self.arg()
            den = self.arg()
            return sympy.Mul(num, safe_pow(den, Integer(-1)))
        if name == "sqrt":
            index = None
            if self.accept("OP", "["):
                index = self.additive()
                self.expect("OP", "]")
            v = self.arg()
            if index is None:
                return safe_pow(v, Rational(1, 2))
            if index == 0:
                raise ParseError("zeroth root")
            return safe_pow(v, safe_pow(index, Integer(-1)))
        if name in ("sum", "prod"):
            return self._big_operator(name)
        if name == "binom":
            n = self.arg()
            k = self.arg()
            if n.is_Integer and abs(n) > 10_000:
                raise TooBig("binomial too large")
            return sympy.binomial(n, k)
        if name == "pi":
            return sympy.pi
        if name == "infty":
            return sympy.oo
        if name in ("lfloor", "lceil"):
            v = self.additive()
            self.expect("CMD", "rfloor" if name == "lfloor" else "rceil")
            return (sympy.floor if name == "lfloor" else sympy.ceiling)(v)
        if name == "|":
            raise ParseError("norm")
        if name in _GREEK:
            return self._symbol(name)
        if name == "mathbf" or name == "vec" or name == "overline" or name == "hat" or name == "bar":
            raise ParseError(name)
        raise ParseError(f"unsupported command \\{name}")
