"""Checks before a run is resumed: is the plan still the one the checkpoint was trained with?

Which plans are compared. Every checkpoint folder holds a copy of the plan that produced it
(``checkpoints/step_NNNNNN/plan.json``; ``meta.json`` holds its ``plan_hash``). The plan a resume
runs with is the run folder's ``plan.json`` (which a user may have edited), or that plan with the
overrides given on the command line (``engine run RUN --resume trainer.total_steps=60``). The two are
compared key by key: a difference that changes the maths (``rollout.n``, ``trainer.lr``, the model,
the data ...) refuses the resume and names the keys; a safe one (more ``trainer.total_steps``,
tracking, checkpoint and evaluation cadence, memory-only micro-batch sizes) is allowed, and the
run folder's ``plan.json`` is then rewritten to the new plan. A checkpoint written before plan copies
existed is checked by its ``plan_hash`` alone.

A run whose last checkpoint is at ``trainer.total_steps`` and whose summary says it is complete is
finished: resuming it says so and stops, without loading a model or exporting again.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Optional

if TYPE_CHECKING:  # annotations only: no import at run time
    from compiler.plan import Plan


#: Plan keys that may differ between the checkpoint's plan and the resumed plan. A key ending in
#: ``.`` allows everything under it. Spec keys are written without the ``spec.`` prefix.
SAFE_KEYS: tuple[str, ...] = (
    "name", "description",
    "trainer.total_steps",                   # more (or fewer) steps: the steps already done are unchanged
    "tracking.", "checkpoint.",               # where and how often metrics and checkpoints are written
    "evaluation.every", "evaluation.benchmarks", "evaluation.data_dir", "evaluation.batch_size",
    "trainer.micro_batch_size", "trainer.log_prob_micro_batch_size", "rollout.micro_batch_size",
    "cluster.cpu_threads", "cluster.ray_address",
    # derived or descriptive plan fields (not spec values)
    "plan.sources", "plan.notes", "plan.reasons", "plan.estimates.", "plan.hash", "plan.peak_memory_gib",
    "plan.trainer.micro_batch_size", "plan.trainer.gradient_accumulation", "plan.trainer.log_prob_micro_batch_size",
    # the plan's lowered copies of the safe spec keys above
    "plan.schedule.total_steps", "plan.schedule.checkpoint_every", "plan.schedule.keep_checkpoints",
    "plan.schedule.export_hf", "plan.evaluation.every", "plan.evaluation.batch_size", "plan.rollout.micro_batch_size",
)


class ResumeError(ValueError):
    """A resume that would not continue the same experiment (the message names what differs)."""


def _flatten(value: Any, prefix: str, out: dict[str, Any]) -> None:
    if isinstance(value, dict) and value:
        for key, item in value.items():
            _flatten(item, f"{prefix}.{key}" if prefix else str(key), out)
    else:
        out[prefix] = value


def _user_keys(plan_json: dict) -> dict[str, Any]:
    """Flattened plan with spec keys as users write them (``rollout.n``) and the rest as ``plan.*``."""
    out: dict[str, Any] = {}
    for key, value in plan_json.items():
        if key == "spec":
            _flatten(value, "", out)
        else:
            _flatten(value, f"plan.{key}", out)
    return out


def is_safe(key: str, safe: Iterable[str] = SAFE_KEYS) -> bool:
    """Whether a differing ``key`` leaves the maths of the steps already trained unchanged."""
    return any(key == s or (s.endswith(".") and key.startswith(s)) for s in safe)


def changed_keys(saved_plan_json: dict, new_plan_json: dict) -> list[str]:
    """Every dotted key whose value differs between the two plans (sorted)."""
    a, b = _user_keys(saved_plan_json), _user_keys(new_plan_json)
    missing = object()
    return sorted(k for k in set(a) | set(b) if a.get(k, missing) != b.get(k, missing))


def plan_differences(saved_plan_json: dict, new_plan_json: dict) -> list[str]:
    """The differing keys that change the maths of training (empty: the resume may go on).

    Keys are spec keys (``rollout.n``, ``trainer.lr``) or ``plan.*`` for the placement.
    """
    return [k for k in changed_keys(saved_plan_json, new_plan_json) if not is_safe(k)]


def describe_differences(saved_plan_json: dict, new_plan_json: dict, keys: list[str]) -> str:
    """``rollout.n: 8 -> 16`` lines for ``keys``."""
    a, b = _user_keys(saved_plan_json), _user_keys(new_plan_json)
    return "\n".join(f"  - {k}: {json.dumps(a.get(k))} -> {json.dumps(b.get(k))}" for k in keys)


def _ranges(steps: list[int]) -> str:
    """``[5, 6, 7, 9]`` -> ``5-7, 9``."""
    out: list[str] = []
    for s in sorted(set(steps)):
        if out and int(out[-1].split("-")[-1]) == s - 1:
            out[-1] = f"{out[-1].split('-')[0]}-{s}"
        else:
            out.append(str(s))
    return ", ".join(out)


def describe_resume(checkpoint_step: Optional[int], logged_steps: Iterable[int], total_steps: int) -> str:
    """What a resume does: the checkpoint it starts from, the steps logged after it that will be
    redone (their metrics are replaced), and the steps left."""
    start = checkpoint_step or 0
    redo = sorted(s for s in set(logged_steps) if s > start)
    head = (f"resuming from the checkpoint of step {start}" if checkpoint_step
            else "resuming: no checkpoint, starting from step 0")
    parts = [head]
    if redo:
        parts.append(f"step{'s' if len(redo) > 1 else ''} {_ranges(redo)} ran after it and will be redone")
    if start < total_steps:
        parts.append(f"steps {start + 1}-{total_steps} to go" if start + 1 < total_steps else f"step {total_steps} to go")
    return "; ".join(parts)


def is_finished(checkpoint_step: Optional[int], total_steps: int, summary: Optional[dict]) -> bool:
    """A run is finished when its last checkpoint is at (or past) ``total_steps`` and its summary
    (written after the export) says it is complete."""
    return bool(checkpoint_step is not None and checkpoint_step >= total_steps and summary
                and summary.get("complete") and summary.get("steps_done", -1) >= total_steps)


def logged_steps(metrics_path: Path) -> list[int]:
    """Steps recorded in ``metrics.jsonl`` (lines cut by a crash are skipped)."""
    steps = []
    if metrics_path.exists():
        for line in metrics_path.read_text().splitlines():
            try:
                steps.append(int(json.loads(line)["step"]))
            except (ValueError, KeyError, TypeError):
                continue
    return steps


_LATEST = object()


def check_resume(plan: Plan, run_dir: Path, log: Callable[[str], None], checkpoint_step: Any = _LATEST) -> Optional[dict]:
    """Run the resume checks for ``plan`` in ``run_dir`` before anything is loaded.

    ``checkpoint_step``: the checkpoint the resume continues from (`checkpoint.resume_step`; None:
    none); by default the latest complete one.

    Returns the run's summary when it is finished (the caller stops); raises `ResumeError` when
    the plan differs from the checkpoint's in something that changes the maths; otherwise logs
    which steps will be redone, rewrites ``plan.json`` when the plan changed safely, and returns None.
    """
    from engine.runtime import checkpoint as C

    run_dir = Path(run_dir)
    ckpt_root = run_dir / "checkpoints"
    C.clean_partial(ckpt_root)
    if checkpoint_step is _LATEST:
        steps = C.list_checkpoints(ckpt_root)
        last = steps[-1] if steps else None
    else:
        last = checkpoint_step
    new_json = json.loads(plan.to_json())
    if last is not None:
        saved_json, saved_hash = C.checkpoint_plan(ckpt_root, last)
        if saved_json is not None:
            refused = plan_differences(saved_json, new_json)
            if refused:
                raise ResumeError(
                    f"cannot resume {run_dir}: the plan differs from the one checkpoint step {last} was trained "
                    f"with in {len(refused)} key(s) that change the maths:\n"
                    + describe_differences(saved_json, new_json, refused)
                    + "\nstart a new run for a changed experiment; only safe keys (e.g. trainer.total_steps, "
                      "tracking.*, checkpoint.*, evaluation.every) may change on a resume")
            allowed = changed_keys(saved_json, new_json)
            shown = [k for k in allowed if not k.startswith("plan.")]
            if shown:
                log("resume: allowed plan changes:\n" + describe_differences(saved_json, new_json, shown))
        elif saved_hash and saved_hash != plan.hash:
            raise ResumeError(f"cannot resume {run_dir}: checkpoint step {last} was trained with plan {saved_hash}, "
                              f"not {plan.hash} (this checkpoint holds no plan copy to compare key by key)")
    summary_path = run_dir / "summary.json"
    try:
        summary = json.loads(summary_path.read_text()) if summary_path.exists() else None
    except ValueError:
        summary = None  # a garbled summary: the run is not taken as finished, and is rewritten at its end
    total = plan.schedule.total_steps
    if is_finished(last, total, summary):
        log(f"{run_dir} is finished: step {last} of {total} is checkpointed"
            + (f" and exported to {summary.get('final_model')}" if summary.get("final_model") else "")
            + f". Nothing to do; to train longer, resume with trainer.total_steps=N (N > {total}).")
        return {**summary, "already_finished": True}
    plan_file = run_dir / "plan.json"
    if not plan_file.exists() or json.loads(plan_file.read_text()).get("hash") != plan.hash:
        tmp = plan_file.with_name("plan.json.tmp")
        tmp.write_text(plan.to_json())
        os.replace(tmp, plan_file)
    log(describe_resume(last, logged_steps(run_dir / "metrics.jsonl"), total))
    return None


def plan_with_overrides(plan: Plan, overrides: list[str]) -> Plan:
    """``plan`` recompiled with ``overrides`` applied to its resolved spec (``engine run RUN --resume
    key=value``); the original source files are kept. Raises `compiler.errors.SpecError`."""
    import tempfile

    from compiler import compile_spec

    if not overrides:
        return plan
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "resumed-spec.yaml"
        path.write_text(json.dumps(plan.spec.model_dump(mode="json")))  # JSON is YAML
        new = compile_spec(str(path), list(overrides))
    return new.model_copy(update={"sources": list(plan.sources)})
