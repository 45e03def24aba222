"""The `engine` command.

    engine run SPEC.yaml [key=value ...] [--run-dir DIR]   compile the spec and execute the plan
    engine run RUN_DIR --resume [key=value ...]             continue a run from its last checkpoint
    engine plan SPEC.yaml [...]                              compile and show the plan (compiler.cli)
    engine schema [...]                                      the spec schema (compiler.cli)
    engine grade [...]                                       grade answers (engine.reward.cli)
    engine rehearse SPEC.yaml [...]                          run a GPU plan's runtime on CPU against a memory ledger
    engine eval SPEC.yaml | RUN_DIR | CHECKPOINT [...]       evaluate a model (engine.runtime.evaluate_cli)
    engine data simplerl [...]                               SimpleRL-Zoo data splits (engine.study.cli)
    engine analyze RUN_DIR [...]                             behaviours, judges, aha moment (engine.study.cli)
    engine report RUN_DIR [...] --out DIR                    HTML + PNG report (engine.study.cli)
    engine --version
    engine ... --debug                                        a Python traceback on an unexpected failure

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

USAGE = """usage: engine {run,plan,rehearse,schema,grade,eval,data,analyze,report} ...

  run SPEC.yaml [key=value ...] [--run-dir DIR]   train: compile the spec and execute the plan
  run RUN_DIR --resume [key=value ...]            continue a run after a crash or Ctrl-C (only safe overrides,
                                                  e.g. trainer.total_steps=N to train a finished run longer)
  plan SPEC.yaml [key=value ...]                  show the placement plan (runs nothing)
  rehearse SPEC.yaml [key=value ...] [--json]     rehearse a GPU plan on this machine: the real runtime,
                                                  a memory ledger per GPU; exit 1 on any violation
  schema                                          describe the spec fields
  grade                                           grade answers with the math reward
  eval SPEC.yaml | RUN_DIR | CHECKPOINT_DIR [--model DIR]   evaluate a model on data.val and the benchmarks
  data simplerl --gsm8k F --math D --out DIR      SimpleRL-Zoo easy/medium/hard + val parquet
  analyze RUN_DIR [--judge-url URL --judge-model M]  behaviours per step, the aha moment
  report RUN_DIR [RUN_DIR ...] --out DIR          HTML page + PNG plots, runs side by side
  --version                                       print the version
  --debug (with any command)                      show the Python traceback of an unexpected failure
"""


def _run_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="engine run", description="Execute a zero-RL experiment.")
    p.add_argument("target", help="a YAML spec, or a run folder with --resume")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="spec overrides (OmegaConf dotlist)")
    p.add_argument("--resume", action="store_true", help="continue the run folder from its last checkpoint")
    p.add_argument("--from-previous", action="store_true",
                   help="with --resume: continue from the checkpoint before the last one (when the last is "
                        "corrupt; the last is moved aside to checkpoints/skipped-step_N, not deleted)")
    p.add_argument("--run-dir", default=None, help="run folder (default: <tracking.runs_dir>/<name>-<time>)")
    p.add_argument("--quiet", action="store_true", help="no progress line and no routine messages (warnings still show)")
    return p


def run_command(argv: Sequence[str]) -> int:
    """`engine run`; returns the exit code."""
    from engine.runtime.resources import ResourceError, check_resources  # light: no torch

    args = _run_parser().parse_intermixed_args(list(argv))
    target = Path(args.target)
    if args.from_previous and not args.resume:
        print("engine run: --from-previous goes with --resume", file=sys.stderr)
        return 2
    if args.resume:
        run_dir = Path(args.run_dir) if args.run_dir else target
        if not (run_dir / "plan.json").exists():
            print(f"engine run --resume: {run_dir} is not a run folder (no plan.json)", file=sys.stderr)
            return 2
        from compiler.errors import SpecError
        from compiler.plan import Plan
        from engine.runtime.resume import plan_with_overrides

        try:
            plan = Plan.from_json((run_dir / "plan.json").read_text())
        except (ValueError, OSError) as e:  # JSON, schema (pydantic), version; UnicodeDecodeError
            print(f"engine run --resume: {run_dir / 'plan.json'} is not a plan this engine can read: "
                  f"{str(e).splitlines()[0][:300]}", file=sys.stderr)
            return 2
        try:  # overrides: the resume checks allow only those that leave the maths unchanged
            plan = plan_with_overrides(plan, list(args.overrides))
        except SpecError as e:
            print(str(e), file=sys.stderr)
            return 2
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
        from compiler.api import compile_with_source, require_data_files
        from compiler.errors import SpecError

        try:
            loaded, plan = compile_with_source(str(target), list(args.overrides))  # compiled once
            # hardware first: a plan that cannot run here says so before anything else is checked
            check_resources(plan)
            require_data_files(loaded, plan)
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

    from engine.runtime.quiet import quiet_model_libraries

    quiet_model_libraries()
    from engine.runtime.loop import train

    stream = open("/dev/null", "w") if args.quiet else None
    print(f"run folder: {run_dir}  (plan {plan.hash})", file=sys.stderr)
    try:
        # --quiet: no progress line and no routine messages, but warnings always reach stderr
        log = (lambda m: print(m, file=sys.stderr) if m.startswith("warning") else None) if args.quiet else None
        summary = train(plan, run_dir, resume=args.resume, log=log, progress_stream=stream,
                        from_previous=args.from_previous, preflight=False)  # preflight done above
    except KeyboardInterrupt:
        print(f"\ninterrupted; continue with: engine run {run_dir} --resume", file=sys.stderr)
        return 130
    except (FileExistsError, FileNotFoundError, ValueError, RuntimeError) as e:  # ResumeError is a ValueError
        print(f"engine run: {e}", file=sys.stderr)
        return 1
    if summary.get("already_finished"):
        return 0
    r0, r1 = summary.get("reward_first"), summary.get("reward_last")
    if r0 is not None:
        aim = f"; aim: aim up --repo {run_dir}" if plan.spec.tracking.backend == "aim" else ""
        print(f"done: reward {r0:.3f} -> {r1:.3f} in {summary['wall_time_s']:.0f}s; "
              f"summary: {run_dir / 'summary.json'}{aim}", file=sys.stderr)
    return 0


def version() -> str:
    """The installed package's version (``pyproject.toml``), or the source tree's when not installed."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("zero-rl-engine")
    except PackageNotFoundError:
        import re

        text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
        m = re.search(r'^version\s*=\s*"([^"]+)"', text, re.M)
        return m.group(1) if m else "unknown"


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the `engine` console script: one error path for every command (a message and
    exit 1 or 2; a traceback only with ``--debug``)."""
    from compiler.errors import DEBUG_FLAG, run_guarded

    argv = list(sys.argv[1:] if argv is None else argv)
    cmd = next((a for a in argv if a != DEBUG_FLAG), "")
    return run_guarded(f"engine {cmd}".strip(), _dispatch, argv)


def _dispatch(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0 if argv else 2
    if argv[0] in ("--version", "-V", "version"):
        print(f"engine {version()}")
        return 0
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
    elif cmd == "rehearse":
        from engine.rehearse.cli import rehearse_command

        code = rehearse_command(rest)
    elif cmd == "eval":
        from engine.runtime.evaluate_cli import eval_command

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
