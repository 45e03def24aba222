"""`spec-diff A.yaml B.yaml`: the keys two experiments differ in, after inheritance and defaults.

    spec-diff specs/qwen2.5-7b.yaml specs/ablations/qwen2.5-7b-strict-format.yaml
    spec-diff A.yaml B.yaml --json
    spec-diff A.yaml A.yaml --b-set rollout.n=16      # what an override changes
    spec-diff A.yaml B.yaml --set cluster.nodes=1      # overrides applied to both

Exit 0 when equal, 1 when different, 2 when a spec is invalid. Plan-level differences (feasible,
parallel sizes, peak memory, step time, rollouts and tokens per step, GPU-hours of the whole run) are
listed under ``plan.`` (``--no-plan`` skips lowering).
"""

from __future__ import annotations

import json
import sys
from typing import Any, Optional, Sequence

from compiler.cli import _Parser, write_stdout
from compiler.diff import Change, diff_plans, diff_specs
from compiler.errors import SpecError


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value if value and value.strip() == value and "\n" not in value else json.dumps(value)
    return json.dumps(value)


def format_table(changes: Sequence[Change], name_a: str = "A", name_b: str = "B", limit: int = 60) -> str:
    """Aligned three-column table: key, value in A, value in B."""
    def cut(text: str) -> str:
        return text if len(text) <= limit else text[: limit - 3] + "..."

    rows = [("key", name_a, name_b)] + [(c.path, cut(_fmt(c.a)), cut(_fmt(c.b))) for c in changes]
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    lines = [f"{r[0]:<{w0}}  {r[1]:<{w1}}  {r[2]}".rstrip() for r in rows]
    lines.insert(1, f"{'-' * w0}  {'-' * w1}  {'-' * max(len(r[2]) for r in rows)}")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """`spec-diff` (``--debug``: a traceback on an unexpected failure)."""
    from compiler.errors import run_guarded

    return run_guarded("spec-diff", _main, list(sys.argv[1:] if argv is None else argv))


def _main(argv: Optional[Sequence[str]] = None) -> int:
    p = _Parser(prog="spec-diff", description="Compare two experiment specs after inheritance and defaults.")
    p.add_argument("a", help="first spec file")
    p.add_argument("b", help="second spec file")
    p.add_argument("--json", action="store_true", help="print the changes as JSON")
    p.add_argument("--set", dest="both", action="append", default=[], metavar="KEY=VALUE", help="override for both specs")
    p.add_argument("--a-set", action="append", default=[], metavar="KEY=VALUE", help="override for spec A")
    p.add_argument("--b-set", action="append", default=[], metavar="KEY=VALUE", help="override for spec B")
    p.add_argument("--no-plan", action="store_true", help="compare specs only (skip lowering to plans)")
    args = p.parse(argv)
    if isinstance(args, int):
        return args

    from compiler.api import load_and_validate

    results = []
    problems = []
    for path, extra in ((args.a, args.a_set), (args.b, args.b_set)):
        try:
            results.append(load_and_validate(path, [*args.both, *extra]))
        except SpecError as exc:
            problems.append(f"{path}: {exc.render()}")
    if problems:
        print("\n".join(problems), file=sys.stderr)
        return 2
    (la, sa, aa), (lb, sb, ab) = results
    changes = diff_specs(sa, sb)
    if not args.no_plan:
        from compiler.lower import lower

        try:
            changes += diff_plans(lower(sa, aa, la.sources), lower(sb, ab, lb.sources))
        except SpecError as exc:
            print(exc.render(), file=sys.stderr)
            return 2
    if args.json:
        write_stdout(json.dumps({"a": args.a, "b": args.b, "equal": not changes,
                                 "changes": [c.to_dict() for c in changes]}, indent=2))
    elif changes:
        write_stdout(format_table(changes, args.a, args.b))
    else:
        write_stdout(f"no differences: {args.a} and {args.b} resolve to the same experiment")
    return 1 if changes else 0


if __name__ == "__main__":
    sys.exit(main())
