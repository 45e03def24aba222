"""Atomic checkpoints: write into a temporary folder, fsync, then `os.replace` it into place.

Layout: ``RUN/checkpoints/step_000005/{trainer/, state.pt, plan.json, meta.json}``: ``trainer/`` is what
each trainer rank wrote, ``state.pt`` the driver's RNG state, ``plan.json`` the plan the checkpoint was
trained with (`engine.runtime.resume` compares it with the plan of a resume). A checkpoint folder either exists
complete or not at all; a crash mid-write leaves only a ``.tmp-*`` folder, which is ignored and
cleaned up. ``meta.json`` is written last inside the temporary folder and names the step.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

_STEP_DIR = re.compile(r"^step_(\d{6,})$")
_OLD_DIR = re.compile(r"^\.old-(step_\d{6,})-\d+$")


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch (CPU and CUDA) RNG states."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Inverse of `rng_state`."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(ckpt_root: str | Path, step: int, state: dict[str, Any], meta: dict[str, Any],
                    keep_last: int = 2, plan_json: Optional[str] = None,
                    write: Optional[Callable[[Path], None]] = None) -> Path:
    """Write ``state`` (torch-serialisable), ``plan_json`` (the plan's JSON, when given) and ``meta``
    (JSON) for ``step`` atomically.

    ``write(folder)`` adds more to the checkpoint before it is complete (the trainer ranks write
    their shards into ``folder/trainer``). Returns the final folder. Older checkpoints beyond
    ``keep_last`` are removed afterwards.
    """
    root = Path(ckpt_root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:06d}"
    tmp = root / f".tmp-step_{step:06d}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    if write is not None:
        write(tmp)
    with open(tmp / "state.pt", "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    if plan_json is not None:
        with open(tmp / "plan.json", "w") as f:
            f.write(plan_json)
            f.flush()
            os.fsync(f.fileno())
    with open(tmp / "meta.json", "w") as f:
        json.dump({**meta, "step": step}, f, indent=2, default=str)
        f.flush()
        os.fsync(f.fileno())
    _fsync_dir(tmp)
    if final.exists():  # re-saving a step (e.g. after a resume): replace it whole
        old = root / f".old-step_{step:06d}-{os.getpid()}"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    _fsync_dir(root)
    for old_step in list_checkpoints(root)[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(root / f"step_{old_step:06d}", ignore_errors=True)
    return final


def list_checkpoints(ckpt_root: str | Path) -> list[int]:
    """Steps of the complete checkpoints under ``ckpt_root``, ascending."""
    root = Path(ckpt_root)
    if not root.is_dir():
        return []
    steps = []
    for d in root.iterdir():
        m = _STEP_DIR.match(d.name)
        if m and (d / "meta.json").exists() and (d / "state.pt").exists():
            steps.append(int(m.group(1)))
    return sorted(steps)


def clean_partial(ckpt_root: str | Path) -> int:
    """Remove temporary folders left by an interrupted save; returns how many were removed.

    A save that replaced an existing step and was killed between its two renames leaves that step
    only as ``.old-step_N-PID``: it is put back as ``step_N`` rather than removed.
    """
    root = Path(ckpt_root)
    n = 0
    if root.is_dir():
        for d in sorted(root.iterdir()):
            m = _OLD_DIR.match(d.name)
            if m and not (root / m.group(1)).exists():
                os.replace(d, root / m.group(1))
            elif d.name.startswith((".tmp-", ".old-")):
                shutil.rmtree(d, ignore_errors=True)
                n += 1
    return n


def load_checkpoint(ckpt_root: str | Path, step: Optional[int] = None) -> Optional[tuple[dict, dict]]:
    """(state, meta) of ``step`` or of the latest complete checkpoint; None when there is none."""
    steps = list_checkpoints(ckpt_root)
    if not steps:
        return None
    step = steps[-1] if step is None else step
    d = Path(ckpt_root) / f"step_{step:06d}"
    with open(d / "meta.json") as f:
        meta = json.load(f)
    state = torch.load(d / "state.pt", map_location="cpu", weights_only=False)
    return state, meta


def checkpoint_plan(ckpt_root: str | Path, step: int) -> tuple[Optional[dict], Optional[str]]:
    """(plan JSON, plan hash) saved with checkpoint ``step``; the JSON is None for a checkpoint
    written before plan copies were kept, the hash None when meta.json has none."""
    d = Path(ckpt_root) / f"step_{step:06d}"
    with open(d / "meta.json") as f:
        plan_hash = json.load(f).get("plan_hash")
    plan = json.loads((d / "plan.json").read_text()) if (d / "plan.json").exists() else None
    return plan, plan_hash


def is_checkpoint_dir(path: str | Path) -> bool:
    """Whether ``path`` is one complete checkpoint folder (``step_NNNNNN`` with state and meta)."""
    p = Path(path)
    return bool(_STEP_DIR.match(p.name)) and (p / "meta.json").exists() and (p / "state.pt").exists()


def checkpoint_plan_or_run_plan(step_dir: str | Path):
    """The `Plan` checkpoint ``step_dir`` was trained with: its own ``plan.json``, else the run
    folder's (``RUN/checkpoints/step_N`` -> ``RUN/plan.json``); None when neither exists."""
    from compiler.plan import Plan

    d = Path(step_dir)
    for path in (d / "plan.json", d.parent.parent / "plan.json"):
        if path.exists():
            return Plan.from_json(path.read_text())
    return None


def export_checkpoint_hf(step_dir: str | Path, plan: Any, out_dir: str | Path, log=print) -> str:
    """Write checkpoint ``step_dir``'s policy as a HF model folder ``out_dir`` (config, weights,
    tokenizer, generation config): the run's base model with the checkpoint's weights loaded.

    The base model is the one named in the run's ``run.json`` when that folder still exists, else it
    is resolved (built and cached, for a random-init model) from the plan. A torch trainer's
    checkpoint is read directly; another backend's is loaded by that backend (one rank: a checkpoint
    of several ranks is exported by its run, in ``final/``). Returns ``out_dir``.
    """
    from engine.modeling import load_model, load_tokenizer

    d = Path(step_dir)
    run_info_path = d.parent.parent / "run.json"
    info = json.loads(run_info_path.read_text()) if run_info_path.exists() else {}
    model_path, tok_path = info.get("model_path"), info.get("tokenizer_path")
    if not (model_path and (Path(model_path) / "config.json").exists() and tok_path and Path(tok_path).exists()):
        from engine.model_files import resolve_base_model

        model_path, tok_path = resolve_base_model(plan.spec, plan.architecture, log=log)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch_state = d / "trainer" / "trainer.pt"
    if torch_state.exists():
        model = load_model(model_path, dtype=torch.float32)
        model.load_state_dict(torch.load(torch_state, map_location="cpu", weights_only=False)["model"])
        model.save_pretrained(out)
    elif len(plan.trainer.ranks) == 1:
        from engine.backends.registry import BackendContext, build_trainer

        trainer = build_trainer(BackendContext(plan, model_path, tok_path, "cpu"))
        trainer.load_checkpoint(str(d / "trainer"))
        trainer.export_hf(str(out))
    else:
        raise ValueError(f"{d} holds a {len(plan.trainer.ranks)}-rank {plan.trainer.backend} checkpoint; "
                         "evaluate the run's final/ export, or resume the run to write one")
    load_tokenizer(tok_path).save_pretrained(out)
    log(f"checkpoint {d.name}: exported its policy to {out}")
    return str(out)
