"""Atomic, verified checkpoints: write into a temporary folder, fsync, then `os.replace` it into place.

Layout: ``RUN/checkpoints/step_000005/{trainer/, state.pt, plan.json, meta.json, checksums.json}``:
``trainer/`` is what each trainer rank wrote, ``state.pt`` the driver's RNG state, ``plan.json`` the
plan the checkpoint was trained with (`engine.runtime.resume` compares it with the plan of a resume),
``checksums.json`` the size and sha256 of every other file. A checkpoint folder either exists
complete or not at all; a crash mid-write leaves only a ``.tmp-*`` folder, which is ignored and
cleaned up. ``meta.json`` names the step.

Only tensors and plain data are read back (`engine.backends.safe_load`): ``state.pt`` and the torch
trainer's ``trainer.pt`` with ``weights_only=True``, raw pickles (a Megatron checkpoint's
``.metadata``) scanned before Megatron loads them. `verify_checkpoint` checks every file against
``checksums.json`` before a resume or an export loads anything; `resume_step` names a corrupt latest
checkpoint and offers the previous kept one (``engine run RUN --resume --from-previous``).

The driver never touches CUDA here: each trainer rank saves its own device's RNG state.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

import numpy as np
import torch

from engine.backends.safe_load import CheckpointFileError, check_raw_pickles, load_plain
from engine.runtime.run_folder import DiskFullError, folder_bytes, is_disk_full, require_free

if TYPE_CHECKING:  # annotations only: no import at run time
    from compiler.plan import Plan


_STEP_DIR = re.compile(r"^step_(\d{6,})$")
_OLD_DIR = re.compile(r"^\.old-(step_\d{6,})-\d+$")

#: The file that lists every other file of a checkpoint with its size and sha256.
CHECKSUMS = "checksums.json"
#: A checkpoint skipped by ``--from-previous`` is renamed to this prefix + its name (kept, not deleted).
SKIPPED_PREFIX = "skipped-"


class CheckpointError(ValueError):
    """A checkpoint that cannot be trusted (corrupt, truncated, holding code); the message names it
    and what to do."""


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch CPU RNG states, as tensors and plain data (``weights_only`` loads them).

    No CUDA state: this runs in the driver, which must not open a CUDA context on every visible GPU;
    each trainer rank saves its own device's generator with its shard.
    """
    version, keys, gauss = random.getstate()
    kind, np_keys, pos, has_gauss, cached = np.random.get_state()
    return {"python": {"version": int(version), "state": torch.tensor(keys, dtype=torch.int64),
                       "gauss_next": gauss},
            "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
                      "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
            "torch": torch.get_rng_state()}


def set_rng_state(state: dict[str, Any]) -> None:
    """Inverse of `rng_state`."""
    py, npy = state["python"], state["numpy"]
    random.setstate((py["version"], tuple(int(x) for x in py["state"].tolist()), py["gauss_next"]))
    np.random.set_state((npy["kind"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"],
                         npy["cached_gaussian"]))
    torch.set_rng_state(state["torch"])


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _files(folder: Path) -> list[Path]:
    """Every regular file under ``folder`` except ``checksums.json``, sorted."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.relative_to(folder).as_posix() != CHECKSUMS)


def _hash_all(folder: Path, files: list[Path]) -> dict[str, str]:
    """sha256 of each file (threads: hashlib releases the GIL on large reads)."""
    with ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1, len(files) or 1))) as pool:
        digests = list(pool.map(_sha256, files))
    return {p.relative_to(folder).as_posix(): d for p, d in zip(files, digests)}


def write_checksums(folder: str | Path) -> None:
    """Write ``folder/checksums.json``: the size and sha256 of every other file (fsynced)."""
    d = Path(folder)
    files = _files(d)
    digests = _hash_all(d, files)
    doc = {"algorithm": "sha256",
           "files": {rel: {"bytes": (d / rel).stat().st_size, "sha256": h} for rel, h in digests.items()}}
    with open(d / CHECKSUMS, "w") as f:
        json.dump(doc, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())


def verify_checkpoint(step_dir: str | Path, log: Optional[Callable[[str], None]] = None) -> list[str]:
    """Problems of checkpoint folder ``step_dir`` (empty: it may be loaded).

    Every file listed in ``checksums.json`` must be there with its size and sha256, no other file may
    be (a loader could read it), and raw pickles must reference only checkpoint-metadata globals. A
    checkpoint without ``checksums.json`` (written before checksums existed) is loaded unverified,
    with a warning through ``log``; its files are still read as tensors and plain data only.
    """
    d = Path(step_dir)
    problems: list[str] = []
    for name in ("meta.json", "state.pt"):
        if not (d / name).is_file():
            problems.append(f"{name}: missing")
    sums_path = d / CHECKSUMS
    if not sums_path.exists():
        if log is not None:
            log(f"warning: {d} has no {CHECKSUMS} (written before checksums existed): loaded unverified")
    else:
        try:
            listed = json.loads(sums_path.read_text())["files"]
        except (OSError, ValueError, KeyError, TypeError):
            listed = None
        if not isinstance(listed, dict):
            return problems + [f"{CHECKSUMS}: unreadable (truncated or corrupt)"]
        present = {p.relative_to(d).as_posix(): p for p in _files(d)}
        for rel in sorted(set(present) - set(listed)):
            problems.append(f"{rel}: not written by the checkpoint's save (not in {CHECKSUMS})")
        to_hash = []
        for rel, entry in sorted(listed.items()):
            p = present.get(rel)
            if p is None:
                problems.append(f"{rel}: missing")
            elif not isinstance(entry, dict) or p.stat().st_size != entry.get("bytes"):
                size = entry.get("bytes") if isinstance(entry, dict) else "?"
                problems.append(f"{rel}: {p.stat().st_size} bytes, {size} when it was written (truncated or changed)")
            else:
                to_hash.append(p)
        digests = _hash_all(d, to_hash)
        for rel, h in digests.items():
            if h != listed[rel].get("sha256"):
                problems.append(f"{rel}: sha256 differs from the one written with it (the file changed or is corrupt)")
    problems += [p.replace(str(d) + os.sep, "") for p in check_raw_pickles(_files(d / "trainer") if (d / "trainer").is_dir() else [])]
    return problems


def _write_checkpoint_files(tmp: Path, step: int, state: dict[str, Any], meta: dict[str, Any],
                            plan_json: Optional[str], write: Optional[Callable[[Path], None]]) -> None:
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
    write_checksums(tmp)
    _fsync_dir(tmp)


def save_checkpoint(ckpt_root: str | Path, step: int, state: dict[str, Any], meta: dict[str, Any],
                    keep_last: int = 2, plan_json: Optional[str] = None,
                    write: Optional[Callable[[Path], None]] = None) -> Path:
    """Write ``state`` (tensors and plain data), ``plan_json`` (the plan's JSON, when given), ``meta``
    (JSON) and their checksums for ``step`` atomically.

    ``write(folder)`` adds more to the checkpoint before it is complete (the trainer ranks write
    their shards into ``folder/trainer``). Returns the final folder. Older checkpoints beyond
    ``keep_last`` are removed afterwards.

    Disk space: before writing, the free space must hold another checkpoint as large as the newest
    one already there (`DiskFullError` otherwise, nothing written). A write that runs out of space
    removes its temporary folder and raises `DiskFullError`; the checkpoints already there are
    untouched.
    """
    root = Path(ckpt_root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:06d}"
    tmp = root / f".tmp-step_{step:06d}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    previous = list_checkpoints(root)
    if previous:  # the next checkpoint is about as large as the last one
        require_free(root, folder_bytes(root / f"step_{previous[-1]:06d}"), f"the checkpoint of step {step}",
                     last_checkpoint=previous[-1], then=f"continue with `engine run {root.parent} --resume`")
    tmp.mkdir()
    try:
        _write_checkpoint_files(tmp, step, state, meta, plan_json, write)
    except BaseException as exc:
        full = is_disk_full(exc, root)
        shutil.rmtree(tmp, ignore_errors=True)
        if full:
            last = f"; the last complete checkpoint (step {previous[-1]}) is intact" if previous else ""
            raise DiskFullError(f"disk full while writing the checkpoint of step {step} in {root}{last}. "
                                f"Free space there, then continue with `engine run {root.parent} --resume`") from exc
        raise
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


def resume_step(ckpt_root: str | Path, previous: bool = False, log: Callable[[str], None] = print) -> Optional[int]:
    """The step a resume continues from, verified (`verify_checkpoint`); None when there is no checkpoint.

    The latest complete checkpoint, or with ``previous`` the one before it: the latest is then moved
    aside to ``skipped-step_N`` (kept for inspection, never loaded again) so that later saves and
    resumes do not meet it. Raises `CheckpointError` naming every problem of the checkpoint that
    would be loaded, and the previous kept checkpoint to resume from instead.
    """
    root = Path(ckpt_root)
    clean_partial(root)
    steps = list_checkpoints(root)
    if not steps:
        if previous:
            raise CheckpointError(f"--from-previous: {root} holds no checkpoint")
        return None
    run = root.parent
    if previous and len(steps) < 2:
        raise CheckpointError(f"--from-previous: {root} keeps only the checkpoint of step {steps[-1]}; there is no "
                              "previous one (checkpoint.keep_last keeps that many)")
    step = steps[-2] if previous else steps[-1]
    d = root / f"step_{step:06d}"
    problems = verify_checkpoint(d, log)
    if problems:
        earlier = [s for s in steps if s < step]
        what = (f"resume from the previous kept checkpoint (step {earlier[-1]}) with `engine run {run} --resume "
                f"--from-previous`" if earlier and not previous else
                "no earlier kept checkpoint verifies here; start a new run, or restore the file from a copy")
        raise CheckpointError(f"checkpoint {d} is corrupt, nothing was loaded:\n"
                              + "".join(f"  - {p}\n" for p in problems[:20])
                              + (f"  ... and {len(problems) - 20} more\n" if len(problems) > 20 else "") + what)
    if previous:
        skipped = root / f"step_{steps[-1]:06d}"
        target = root / f"{SKIPPED_PREFIX}{skipped.name}"
        n = 1
        while target.exists():
            n += 1
            target = root / f"{SKIPPED_PREFIX}{skipped.name}.{n}"
        os.replace(skipped, target)
        log(f"warning: --from-previous: skipping the checkpoint of step {steps[-1]} (moved to {target}; delete it when done)")
    return step


def load_checkpoint(ckpt_root: str | Path, step: Optional[int] = None, verify: bool = True,
                    log: Optional[Callable[[str], None]] = None) -> Optional[tuple[dict, dict]]:
    """(state, meta) of ``step`` or of the latest complete checkpoint; None when there is none.

    ``verify``: check the folder against its checksums first (`CheckpointError` when it fails). The
    state is read as tensors and plain data only."""
    steps = list_checkpoints(ckpt_root)
    if not steps:
        return None
    step = steps[-1] if step is None else step
    d = Path(ckpt_root) / f"step_{step:06d}"
    if verify:
        problems = verify_checkpoint(d, log)
        if problems:
            raise CheckpointError(f"checkpoint {d} is corrupt, nothing was loaded:\n" + "".join(f"  - {p}\n" for p in problems))
    try:
        meta = json.loads((d / "meta.json").read_text())
        state = load_plain(d / "state.pt", map_location="cpu")
    except (CheckpointFileError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {d}: {exc}") from None
    return state, meta


def checkpoint_plan(ckpt_root: str | Path, step: int) -> tuple[Optional[dict], Optional[str]]:
    """(plan JSON, plan hash) saved with checkpoint ``step``; the JSON is None for a checkpoint
    written before plan copies were kept, the hash None when meta.json has none."""
    d = Path(ckpt_root) / f"step_{step:06d}"
    try:
        plan_hash = json.loads((d / "meta.json").read_text()).get("plan_hash")
        plan = json.loads((d / "plan.json").read_text()) if (d / "plan.json").exists() else None
    except (OSError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"checkpoint {d}: meta.json or plan.json is unreadable ({exc})") from None
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
            try:
                return Plan.from_json(path.read_text())
            except (OSError, ValueError) as exc:  # pydantic's ValidationError is a ValueError
                raise CheckpointError(f"{path} is not a plan this engine can read: {str(exc).splitlines()[0]}") from None
    return None


def export_checkpoint_hf(step_dir: str | Path, plan: Plan, out_dir: str | Path, log=print) -> str:
    """Write checkpoint ``step_dir``'s policy as a HF model folder ``out_dir`` (config, weights,
    tokenizer, generation config): the run's base model with the checkpoint's weights loaded.

    The base model is the one named in the run's ``run.json`` when that folder still exists, else it
    is resolved (built and cached, for a random-init model) from the plan. A torch trainer's
    checkpoint is read directly; another backend's is loaded by that backend (one rank: a checkpoint
    of several ranks is exported by its run, in ``final/``). Returns ``out_dir``.
    """
    from engine.modeling import load_model, load_tokenizer

    d = Path(step_dir)
    problems = verify_checkpoint(d, log)
    if problems:
        raise CheckpointError(f"checkpoint {d} is corrupt, nothing was loaded:\n" + "".join(f"  - {p}\n" for p in problems))
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
        try:
            model.load_state_dict(load_plain(torch_state, map_location="cpu")["model"])
        except CheckpointFileError as exc:
            raise CheckpointError(str(exc)) from None
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
