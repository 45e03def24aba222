"""The `engine` command.

    engine run SPEC.yaml [key=value ...] [--run-dir DIR]   compile the spec and execute the plan
    engine run RUN_DIR --resume                             continue a run from its last checkpoint
    engine plan SPEC.yaml [...]                              compile and show the plan (compiler.cli)
    engine schema [...]                                      the spec schema (compiler.cli)
    engine grade [...]                                       grade answers (engine.reward.cli)
    engine eval SPEC.yaml | RUN_DIR [...]                    evaluate a model (engine.evaluation.cli)
    engine data simplerl [...]                               SimpleRL-Zoo data splits (engine.study.cli)
    engine analyze RUN_DIR [...]                             behaviours, judges, aha moment (engine.study.cli)
    engine report RUN_DIR [...] --out DIR                    HTML + PNG report (engine.study.cli)

Dispatch is lazy: `engine plan` and `engine schema` never import torch. Exit codes of `run`:
0 done, 1 failed (e.g. the plan needs hardware that is not there), 2 invalid spec or usage,
130 interrupted (resumable).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

USAGE = """usage: engine {run,plan,schema,grade,eval,data,analyze,report} ...

  run SPEC.yaml [key=value ...] [--run-dir DIR]   train: compile the spec and execute the plan
  run RUN_DIR --resume                            continue a run after a crash or Ctrl-C
  plan SPEC.yaml [key=value ...]                  show the placement plan (runs nothing)
  schema                                          describe the spec fields
  grade                                           grade answers with the math reward
  eval SPEC.yaml | RUN_DIR [--model DIR]          evaluate a model on data.val and the benchmarks
  data simplerl --gsm8k F --math D --out DIR      SimpleRL-Zoo easy/medium/hard + val parquet
  analyze RUN_DIR [--judge-url URL --judge-model M]  behaviours per step, the aha moment
  report RUN_DIR [RUN_DIR ...] --out DIR          HTML page + PNG plots, runs side by side
"""


def _run_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="engine run", description="Execute a zero-RL experiment.")
    p.add_argument("target", help="a YAML spec, or a run folder with --resume")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="spec overrides (OmegaConf dotlist)")
    p.add_argument("--resume", action="store_true", help="continue the run folder from its last checkpoint")
    p.add_argument("--run-dir", default=None, help="run folder (default: <tracking.runs_dir>/<name>-<time>)")
    p.add_argument("--quiet", action="store_true", help="no progress line")
    return p


def run_command(argv: Sequence[str]) -> int:
    """`engine run`; returns the exit code."""
    from engine.runtime.resources import ResourceError, check_resources  # light: no torch

    args = _run_parser().parse_intermixed_args(list(argv))
    target = Path(args.target)
    if args.resume:
        if args.overrides:
            print("engine run --resume: overrides are not allowed (the run continues its own plan.json)",
                  file=sys.stderr)
            return 2
        run_dir = Path(args.run_dir) if args.run_dir else target
        if not (run_dir / "plan.json").exists():
            print(f"engine run --resume: {run_dir} is not a run folder (no plan.json)", file=sys.stderr)
            return 2
        from compiler.plan import Plan

        plan = Plan.from_json((run_dir / "plan.json").read_text())
        try:
            check_resources(plan)  # stop before importing or loading anything heavy
        except ResourceError as e:
            print(f"engine run: {e}", file=sys.stderr)
            return 1
    else:
        if target.is_dir():
            print(f"engine run: {target} is a folder; to continue a run use `engine run {target} --resume`",
                  file=sys.stderr)
            return 2
        from compiler import compile_spec
        from compiler.errors import SpecError

        try:
            plan = compile_spec(str(target), list(args.overrides))
            # hardware first: a plan that cannot run here says so before anything else is checked
            check_resources(plan)
            plan = compile_spec(str(target), list(args.overrides), check_files=True)
        except SpecError as e:
            print(str(e), file=sys.stderr)
            return 2
        except ResourceError as e:
            print(f"engine run: {e}", file=sys.stderr)
            return 1
        except FileNotFoundError as e:
            print(f"engine run: {e}", file=sys.stderr)
            return 2
        name = f"{plan.spec.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        run_dir = Path(args.run_dir) if args.run_dir else Path(plan.spec.tracking.runs_dir) / name

    from engine.runtime.loop import train

    stream = open("/dev/null", "w") if args.quiet else None
    print(f"run folder: {run_dir}  (plan {plan.hash})", file=sys.stderr)
    try:
        summary = train(plan, run_dir, resume=args.resume, progress_stream=stream)
    except KeyboardInterrupt:
        print(f"\ninterrupted; continue with: engine run {run_dir} --resume", file=sys.stderr)
        return 130
    except (FileExistsError, FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"engine run: {e}", file=sys.stderr)
        return 1
    r0, r1 = summary.get("reward_first"), summary.get("reward_last")
    if r0 is not None:
        print(f"done: reward {r0:.3f} -> {r1:.3f} in {summary['wall_time_s']:.0f}s; "
              f"summary: {run_dir / 'summary.json'}; aim: aim up --repo {run_dir}", file=sys.stderr)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the `engine` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    if cmd == "run":
        code = run_command(rest)
    elif cmd == "plan":
        from compiler.cli import plan_command

        code = plan_command(rest)
    elif cmd == "schema":
        from compiler.cli import schema_command

        code = schema_command(rest)
    elif cmd == "grade":
        from engine.reward.cli import grade_command

        code = grade_command(rest)
    elif cmd == "eval":
        from engine.evaluation.cli import eval_command

        code = eval_command(rest)
    elif cmd in ("data", "analyze", "report"):
        from engine.study import cli as study_cli

        code = {"data": study_cli.data_command, "analyze": study_cli.analyze_command,
                "report": study_cli.report_command}[cmd](rest)
    else:
        print(f"engine: unknown command {cmd!r}\n{USAGE}", file=sys.stderr)
        code = 2
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
