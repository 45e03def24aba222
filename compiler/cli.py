"""`engine plan` and `engine schema`: the compiler's command-line front ends.

    engine plan SPEC [--dry-run] [--json] [key=value ...]
    engine schema [--markdown]

`engine plan` exits 0 when the plan is feasible, 1 when it is not (the reasons say why and what
would fit), 2 when the spec is invalid (every problem on stderr, no traceback). It never runs
anything; ``--dry-run`` is accepted for clarity. ``python -m compiler.cli plan ...`` works too.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Optional, Sequence, Union

from compiler.errors import Problem, SpecError
from compiler.plan import Plan
from compiler.render import plan_summary, render_plan

EXIT_FEASIBLE, EXIT_INFEASIBLE, EXIT_INVALID = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of exiting, so commands return exit codes."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise _UsageError(f"{self.prog}: error: {message}\n{self.format_usage()}")

    def parse(self, argv: Optional[Sequence[str]], *, intermixed: bool = False) -> Union[argparse.Namespace, int]:
        """Arguments of ``argv`` (default ``sys.argv[1:]``), or the exit code when parsing ends the
        command: EXIT_INVALID after a usage error (printed on stderr), 0 after ``--help``."""
        args = list(sys.argv[1:] if argv is None else argv)
        try:
            return self.parse_intermixed_args(args) if intermixed else self.parse_args(args)
        except _UsageError as exc:
            print(str(exc), file=sys.stderr, end="")
            return EXIT_INVALID
        except SystemExit as exc:  # --help
            return int(exc.code or 0)


class _UsageError(Exception):
    pass


def _plan_parser() -> _Parser:
    p = _Parser(prog="engine plan", description="Compile a spec to a checked GPU placement plan (runs nothing).")
    p.add_argument("spec", help="YAML spec file")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="override spec values (OmegaConf dotlist)")
    p.add_argument("--dry-run", action="store_true", help="accepted for clarity: plan never runs anything")
    p.add_argument("--json", action="store_true", help="print a JSON summary (with the full plan and its hash)")
    return p


def plan_json(plan: Plan, warnings: Sequence[Union[Problem, str]] = ()) -> dict:
    """The ``engine plan --json`` document: render.plan_summary (which holds ``hash``), the spec's
    ``warnings`` (also printed on stderr) and the full ``plan``."""
    summary = plan_summary(plan)
    summary["warnings"] = [{"path": w.path, "message": w.message, "hint": w.hint, "file": w.file, "line": w.line}
                           if isinstance(w, Problem) else {"message": str(w)} for w in warnings]
    summary["plan"] = json.loads(plan.to_json())
    return summary


def write_stdout(text: str) -> None:
    """Print ``text`` (plus a newline); a reader that stops early (``| head``) ends the output quietly.

    On a closed pipe the rest is dropped and stdout is pointed at /dev/null, so that neither this
    write nor the interpreter's last flush prints a BrokenPipeError traceback.
    """
    import os

    try:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def plan_command(argv: Optional[Sequence[str]] = None) -> int:
    """`engine plan SPEC [--dry-run] [--json] [key=value ...]` -> exit code (0/1/2)."""
    args = _plan_parser().parse(argv, intermixed=True)
    if isinstance(args, int):
        return args
    from compiler.api import load_and_validate
    from compiler.validate import spec_warnings

    try:
        loaded, spec, arch = load_and_validate(args.spec, args.overrides)
        from compiler.lower import lower  # after validation: invalid specs are reported without it

        plan = lower(spec, arch, loaded.sources)
    except SpecError as exc:
        print(exc.render(), file=sys.stderr)
        return EXIT_INVALID
    warnings = list(spec_warnings(spec, loaded))
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if args.json:
        write_stdout(json.dumps(plan_json(plan, warnings), indent=2, sort_keys=True))
    else:
        write_stdout(render_plan(plan))
    return EXIT_FEASIBLE if plan.feasible else EXIT_INFEASIBLE


def spec_json_schema() -> dict:
    """JSON Schema of one spec file, for editors.

    `ExperimentSpec`'s schema plus the loader's top-level ``extends`` key; leaf fields also accept
    ``${...}`` interpolations and ``???``; nothing is required, since a file may inherit it.
    """
    from schemas import ExperimentSpec

    schema = ExperimentSpec.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "Zero-RL experiment spec"
    props = {"extends": {
        "anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}],
        "description": "Parent spec file(s), relative to this file; this file's keys win.",
        "title": "Extends",
    }}
    props.update(schema.get("properties", {}))
    schema["properties"] = props
    for model in [schema, *schema.get("$defs", {}).values()]:
        # a file may be partial (it extends another): completeness is checked by `engine plan`
        model.pop("required", None)
        for name, prop in model.get("properties", {}).items():
            if name != "extends":
                model["properties"][name] = _allow_interpolation(prop)
    return schema


#: A loader-level value an editor should accept in any leaf field: ``${...}`` or ``???``.
_INTERPOLATION = {"type": "string", "pattern": r"^(\$\{.+\}|\?\?\?)$",
                  "description": "OmegaConf interpolation or mandatory value (resolved by the loader)."}


def _allow_interpolation(prop: dict) -> dict:
    """Let a leaf field also hold ``${...}``/``???`` (sections, which hold mappings, stay as they are)."""
    members = prop.get("anyOf", [prop])
    if any("$ref" in m for m in members) or prop.get("type") == "string":
        return prop
    outer = {k: v for k, v in prop.items() if k in ("default", "description", "title")}
    inner = {k: v for k, v in prop.items() if k not in outer}
    inner_members = inner["anyOf"] if list(inner) == ["anyOf"] else [inner]
    return {**outer, "anyOf": [*inner_members, _INTERPOLATION]}


def schema_command(argv: Optional[Sequence[str]] = None) -> int:
    """`engine schema [--markdown]`: JSON Schema for editors, or the Markdown reference table."""
    p = _Parser(prog="engine schema", description="Print the spec's JSON Schema (or a Markdown reference).")
    p.add_argument("--markdown", action="store_true", help="print the field reference as Markdown tables")
    args = p.parse(argv)
    if isinstance(args, int):
        return args
    if args.markdown:
        from compiler.reference import schema_reference_markdown
        write_stdout(schema_reference_markdown().rstrip("\n"))
    else:
        write_stdout(json.dumps(spec_json_schema(), indent=2))
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m compiler.cli {plan,schema} ...`` (``--debug``: a traceback on an unexpected failure)."""
    from compiler.errors import run_guarded

    def dispatch(args: list[str]) -> int:
        commands = {"plan": plan_command, "schema": schema_command}
        if not args or args[0] not in commands:
            print("usage: python -m compiler.cli {plan,schema} ...", file=sys.stderr)
            return EXIT_INVALID
        return commands[args[0]](args[1:])

    return run_guarded("compiler.cli", dispatch, list(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
