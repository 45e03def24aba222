"""`engine eval`: evaluate one model on the validation set and the benchmarks, without training.

    engine eval SPEC.yaml [key=value ...]        the spec's base model (greedy: evaluation.base_temperature)
    engine eval SPEC.yaml --model DIR            a HF model folder (evaluation.temperature)
    engine eval RUN_DIR                          a run's final policy (RUN_DIR/final), with the run's plan
    engine eval RUN_DIR/checkpoints/step_NNNNNN  the policy of one checkpoint, with the plan it was trained with

A spec (or plan) needs only its generator here: one replica's GPUs, even where training needs more.

Prints a table (or JSON with --json) and writes JSON with --out. Exit codes: 0 done, 1 the plan needs
hardware that is not there, 2 invalid spec, usage or missing files.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:  # annotations only: no import at run time
    from compiler.plan import Plan


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="engine eval", description="Evaluate a model on data.val and the benchmarks.")
    p.add_argument("target", help="a YAML spec, a run folder (evaluates its final/ policy) or a checkpoint folder "
                                  "(RUN/checkpoints/step_NNNNNN)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="spec overrides (not with a run folder)")
    p.add_argument("--model", default=None, help="HF model folder to evaluate instead of the base model")
    p.add_argument("--base", action=argparse.BooleanOptionalAction, default=None,
                   help="sample as for a base model (evaluation.base_temperature) or not (evaluation.temperature); "
                        "default: --base for the spec's base model, --no-base for --model or a run folder")
    p.add_argument("--out", default=None, help="write the result as JSON to this file")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return p


def format_table(result: dict[str, Any]) -> str:
    """The result as a text table: one row per set (val, each benchmark) and the average."""
    m = result["metrics"]
    reports = {**({"val": result["data_val"]} if result.get("data_val") else {}), **(result.get("data_eval") or {})}
    sets = list(reports)  # a set with no usable prompt still gets its row, with its prompt count of 0
    ks = sorted({k.rsplit("/", 1)[1] for k in m if "/pass@" in k}, key=lambda x: int(x.split("@")[1]))
    head = ["set", "prompts", "accuracy", *ks, "length", "boxed"]
    rows = []
    for name in sets:
        pre = "val" if name == "val" else f"eval/{name}"
        cell = lambda key, fmt="{:.3f}": fmt.format(m[f"{pre}/{key}"]) if f"{pre}/{key}" in m else ""
        rows.append([name, str(reports[name].get("kept", "")), cell("accuracy"), *[cell(k) for k in ks],
                     cell("response_length", "{:.1f}"), cell("boxed_ratio")])
    if "eval/average" in m:
        rows.append(["average", "", f"{m['eval/average']:.3f}"] + [""] * (len(head) - 3))
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    lines = [f"model: {result['model_path']}  (temperature {result['temperature']}, top_p {result['top_p']}, "
             f"up to {result['max_response_length']} tokens; {result['wall_time_s']:.1f} s)"]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [head, *rows]]
    return "\n".join(lines)


def check_first(plan: Plan) -> None:
    """The hardware and input-file checks of `evaluate_model`, before a checkpoint is exported."""
    from compiler.validate import missing_data_files
    from engine.runtime.resources import check_resources

    check_resources(plan, command="eval")
    missing = missing_data_files(plan.spec, evaluation_only=True)
    if missing:
        raise FileNotFoundError("input files not found:" + "".join(f"\n  - {key}: {path}\n    hint: {hint}"
                                                                for key, path, hint in missing))


def eval_command(argv: Sequence[str]) -> int:
    """`engine eval`; returns the exit code."""
    from engine.runtime.resources import ResourceError

    args = _parser().parse_intermixed_args(list(argv))
    target = Path(args.target)
    model = args.model
    from engine.runtime.checkpoint import is_checkpoint_dir

    checkpoint = None
    if target.is_dir() and is_checkpoint_dir(target):
        if args.overrides or model:
            print("engine eval: a checkpoint is evaluated with the plan it was trained with (no overrides or --model)",
                  file=sys.stderr)
            return 2
        from engine.runtime.checkpoint import checkpoint_plan_or_run_plan

        checkpoint = target
        try:
            plan = checkpoint_plan_or_run_plan(target)
        except ValueError as e:
            print(f"engine eval: {e}", file=sys.stderr)
            return 2
        if plan is None:
            print(f"engine eval: no plan for {target} (neither {target / 'plan.json'} nor the run's plan.json)",
                  file=sys.stderr)
            return 2
    elif target.is_dir():
        if args.overrides:
            print("engine eval: overrides are not allowed with a run folder (it is evaluated with its own plan)",
                  file=sys.stderr)
            return 2
        if not (target / "plan.json").exists():
            print(f"engine eval: {target} is not a run folder (no plan.json)", file=sys.stderr)
            return 2
        from compiler.plan import Plan

        try:
            plan = Plan.from_json((target / "plan.json").read_text())
        except (ValueError, OSError) as e:  # JSON, schema (pydantic) or version errors; UnicodeDecodeError
            print(f"engine eval: {target / 'plan.json'} is not a plan this engine can read: "
                  f"{str(e).splitlines()[0][:300]}", file=sys.stderr)
            return 2
        model = model or str(target / "final")
        if not args.model and not (target / "final" / "config.json").exists():
            from engine.runtime.checkpoint import list_checkpoints

            steps = list_checkpoints(target / "checkpoints")
            hint = (f"; evaluate a checkpoint instead: engine eval {target / 'checkpoints' / f'step_{steps[-1]:06d}'}"
                    if steps else "")
            print(f"engine eval: {target} has no final/ policy yet (the run is not finished){hint}", file=sys.stderr)
            return 2
    else:
        from compiler import compile_spec
        from compiler.errors import SpecError

        try:
            plan = compile_spec(str(target), list(args.overrides))
        except SpecError as e:
            print(str(e), file=sys.stderr)
            return 2
    from engine.runtime.quiet import quiet_model_libraries

    quiet_model_libraries()
    from engine.runtime.evaluate import evaluate_model

    log = lambda msg: print(msg, file=sys.stderr)  # noqa: E731
    import tempfile

    try:
        with tempfile.TemporaryDirectory(prefix="engine-eval-") as tmp:
            if checkpoint is not None:
                from engine.runtime.checkpoint import export_checkpoint_hf

                check_first(plan)
                model = export_checkpoint_hf(checkpoint, plan, Path(tmp) / checkpoint.name, log=log)
            result = evaluate_model(plan, model, log=log, base=args.base)
            if checkpoint is not None:
                result["model_path"] = str(checkpoint)
    except ResourceError as e:
        print(f"engine eval: {e}", file=sys.stderr)
        return 1
    except (FileNotFoundError, ValueError) as e:
        print(f"engine eval: {e}", file=sys.stderr)
        return 2
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2, sort_keys=True))
    print(json.dumps(result, indent=2, sort_keys=True) if args.json else format_table(result))
    return 0
