"""Atomic checkpoints: write into a temporary folder, fsync, then `os.replace` it into place.

Layout: ``RUN/checkpoints/step_000005/{trainer/, state.pt, meta.json}`` (``trainer/``: what each
trainer rank wrote; ``state.pt``: the driver's RNG and data position). A checkpoint folder either exists
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
                    keep_last: int = 2, write: Optional[Callable[[Path], None]] = None) -> Path:
    """Write ``state`` (torch-serialisable) and ``meta`` (JSON) for ``step`` atomically.

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
