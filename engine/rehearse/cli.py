"""`engine rehearse SPEC [key=value ...] [--steps N] [--json] [--ray-nodes K | --no-ray] [--keep DIR]`.

Exit codes: 0 the plan ran as planned within every device's capacity; 1 a violation (or an infeasible
plan); 2 an invalid spec or usage.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from typing import Iterator, Sequence


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="engine rehearse", description=(
        "Rehearse a GPU plan on this machine: the real runtime (roles, worker groups, step order, the RL step, "
        "parity gate, evaluation, checkpoint, export) for a few steps, with stand-ins that keep a memory "
        "ledger per device where the GPUs would be."))
    p.add_argument("spec", help="a YAML spec")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="spec overrides")
    p.add_argument("--steps", type=int, default=2, help="RL steps to rehearse (default 2)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--ray-nodes", type=int, default=1,
                   help="plan nodes placed for real on a local Ray with fake GPUs (default 1); the rest are simulated")
    p.add_argument("--no-ray", action="store_true", help="every worker in this process (the ledger only)")
    p.add_argument("--keep", default=None, metavar="DIR", help="keep the rehearsal's run folder in DIR")
    return p


@contextlib.contextmanager
def _stdout_to_stderr(active: bool) -> Iterator[None]:
    """While rehearsing, send whatever writes to file descriptor 1 (Ray's raylet warnings, vLLM's and
    Megatron's prints, child processes) to stderr, so that ``--json`` leaves stdout holding the report only."""
    if not active:
        yield
        return
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def rehearse_command(argv: Sequence[str]) -> int:
    """`engine rehearse`; returns the exit code."""
    from compiler import compile_spec
    from compiler.errors import SpecError

    args = _parser().parse_intermixed_args(list(argv))
    if args.steps < 1:
        print("engine rehearse: --steps must be >= 1", file=sys.stderr)
        return 2
    try:
        plan = compile_spec(args.spec, list(args.overrides))
    except SpecError as e:
        print(str(e), file=sys.stderr)
        return 2
    except FileNotFoundError as e:
        print(f"engine rehearse: {e}", file=sys.stderr)
        return 2
    from engine.rehearse.report import render
    from engine.rehearse.runner import RehearsalRefused, rehearse
    from engine.runtime.quiet import quiet_model_libraries

    quiet_model_libraries()
    log = (lambda s: print(s, file=sys.stderr)) if not args.json else (lambda s: None)
    try:
        with _stdout_to_stderr(args.json):
            report = rehearse(plan, steps=args.steps, ray_nodes=0 if args.no_ray else args.ray_nodes, log=log,
                              keep=args.keep)
    except RehearsalRefused as e:
        print(f"engine rehearse: {e}", file=sys.stderr)
        return 1
    print(json.dumps(report, indent=2) if args.json else render(report))
    return 0 if report["ok"] else 1
