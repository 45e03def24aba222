"""`engine eval`: one model on ``data.val`` and the benchmarks, without training (generator and
reward only)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

import torch

from engine.data.loading import load_benchmarks, load_prompts
from engine.evaluation.runner import evaluate_all
from engine.model_files import resolve_model_files
from engine.runtime.resources import check_resources
from engine.runtime.roles import Roles
from engine.core.threads import apply_threads
from engine.sampling import sampling_params

if TYPE_CHECKING:  # annotations only: no import at run time
    from compiler.plan import Plan


def _unreadable_model(exc: BaseException) -> bool:
    """Whether loading a model folder failed on its files (truncated weights, bad JSON)."""
    import json

    e: Optional[BaseException] = exc
    while e is not None:
        if isinstance(e, (OSError, EOFError, json.JSONDecodeError)) or "safetensors" in type(e).__module__.lower() \
                or "Safetensor" in type(e).__name__:
            return True
        e = e.__cause__ or e.__context__
    return False


def evaluate_model(plan: Plan, model_path: Optional[str] = None, log: Callable[[str], None] = print,
                   base: Optional[bool] = None) -> dict[str, Any]:
    """Evaluate one model on ``data.val`` and ``evaluation.benchmarks`` without training: the plan's
    base model, or the HF folder ``model_path``.

    Sampling follows the plan's evaluation settings: ``base_sampling`` for the base model,
    ``sampling`` for another model (``base`` overrides which). Returns the metrics (``val/*``,
    ``eval/*``, as during training), the data reports and what was evaluated.
    """
    check_resources(plan, command="eval")
    spec = plan.spec
    from compiler.validate import missing_data_files

    missing = missing_data_files(spec, evaluation_only=True)  # every missing input at once, before loading
    if missing:
        raise FileNotFoundError("input files not found:" + "".join(f"\n  - {key}: {path}\n    hint: {hint}"
                                                                for key, path, hint in missing))
    threads = apply_threads(spec.cluster.cpu_threads)  # auto: from affinity and load
    torch.manual_seed(plan.schedule.seed)
    base = model_path is None if base is None else base
    files = resolve_model_files(plan, log, model_path)
    val_set = load_prompts(spec.data.val, spec, files.tokenizer, "val", log) if spec.data.val else None
    bench_sets = load_benchmarks(spec, files.tokenizer, log)
    try:
        roles = Roles(plan, files, threads=threads, training=False)
    except Exception as exc:  # noqa: BLE001 - re-raised unless it is an unreadable model folder
        if model_path is None or not _unreadable_model(exc):
            raise
        raise ValueError(f"cannot load the model in {files.model_path}: {type(exc).__name__}: "
                         f"{str(exc).splitlines()[0][:300] if str(exc) else ''} (a truncated or corrupt file there?)") from exc
    t0 = time.perf_counter()
    try:
        ev = plan.evaluation
        sampling = sampling_params(ev.base_sampling if base else ev.sampling, files.end_token_ids)
        metrics = evaluate_all(roles, val_set, bench_sets, plan, sampling, 0, log, label=Path(files.model_path).name)
    finally:
        roles.shutdown()
    return {"model_path": files.model_path, "plan_hash": plan.hash, "name": spec.name,
            "temperature": sampling.temperature, "top_p": sampling.top_p,
            "max_response_length": sampling.max_new_tokens, "wall_time_s": round(time.perf_counter() - t0, 2),
            "metrics": metrics, "data_val": val_set.report if val_set else None,
            "data_eval": {name: ps.report for name, ps in bench_sets.items()}}
