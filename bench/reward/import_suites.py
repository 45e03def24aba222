"""Collect (gold, prediction, verdict) facts from other graders' pytest suites into our corpus.

    python bench/reward/import_suites.py --suite math-verify@5d148cf:/path/to/Math-Verify/tests \
        --suite lighteval@3fd15266:/path/to/lighteval/tests/unit/metrics > facts.jsonl

It reads the literal rows of each ``@pytest.mark.parametrize`` list (an AST walk, nothing of the
suite is imported or run) whose parameter names include a gold, a prediction and an expected
verdict, and prints one JSON line per distinct (gold, prediction) with its origin. The kinds and
exclusions are assigned afterwards (``tests/reward/cases/suites.jsonl`` is the reviewed result).
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from pathlib import Path

_GOLD = ("gold",)
_PRED = ("pred", "prediction")
_EXPECTED = ("expected", "result")


def _literal(node: ast.AST):
    if isinstance(node, ast.Attribute):  # Language.ENGLISH -> "ENGLISH"
        return node.attr
    if isinstance(node, (ast.Tuple, ast.List)):
        return [_literal(e) for e in node.elts]
    return ast.literal_eval(node)


def facts(path: Path, origin: str):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for fn in ast.walk(tree):
        if not isinstance(fn, ast.FunctionDef):
            continue
        for dec in fn.decorator_list:
            if not (isinstance(dec, ast.Call) and getattr(dec.func, "attr", "") == "parametrize"):
                continue
            try:
                names = [n.strip() for n in ast.literal_eval(dec.args[0]).split(",")]
            except (ValueError, AttributeError):
                continue
            g = next((names.index(n) for n in _GOLD if n in names), None)
            p = next((names.index(n) for n in _PRED if n in names), None)
            e = next((names.index(n) for n in _EXPECTED if n in names), None)
            if None in (g, p, e) or not isinstance(dec.args[1], (ast.List, ast.Tuple)):
                continue
            for row in dec.args[1].elts:
                try:
                    vals = _literal(row)
                except ValueError:
                    continue  # a computed row (f-string, call): not a literal fact
                extra = {n: v for k, (n, v) in enumerate(zip(names, vals)) if k not in (g, p, e)}
                yield {"origin": f"{origin}:{path.name}::{fn.name}", "gold": vals[g], "pred": vals[p],
                       "expected": bool(vals[e]), "options": extra}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--suite", action="append", required=True, help="NAME@COMMIT:DIR_OR_FILE")
    args = ap.parse_args()
    seen = set()
    for spec in args.suite:
        origin, _, loc = spec.partition(":")
        root = Path(loc)
        files = sorted(root.rglob("test_*.py")) if root.is_dir() else [root]
        for f in files:
            for fact in facts(f, origin):
                key = (fact["gold"], fact["pred"])
                if key in seen:
                    continue
                seen.add(key)
                print(json.dumps(fact, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
