"""The run folder's rules: one run at a time, never overwritten, never started without room.

* **Lock.** A run holds an exclusive ``flock`` on ``RUN/.lock`` for as long as it executes; the
  file names the process (pid, host, start time). A second ``engine run`` on the same folder stops
  at once with that name. The kernel drops the lock when the process ends, however it ends
  (SIGKILL included), so a resume never meets a stale lock.
* **Never overwritten.** A folder that already holds a run (``plan.json``, ``metrics.jsonl``,
  ``checkpoints/``, ``final/``, ``summary.json``, ``run.json``) is continued with ``--resume`` or
  refused with its name; nothing in it is touched.
* **Disk space.** Before the run starts the free space must hold one checkpoint plus the final
  export, as estimated from the plan (`checkpoint_bytes`); less than ``checkpoint.keep_last + 1``
  checkpoints is a warning. Before each save `engine.runtime.checkpoint` asks for room for one
  more checkpoint as large as the last. A write that runs out of space anyway ends the run with
  `DiskFullError` (a message, exit 1): the temporary files are removed, the last complete
  checkpoint is intact, and the run resumes once there is room.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import inspect
import json
import os
import shutil
import socket
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

if TYPE_CHECKING:  # annotations only: no import at run time
    from compiler.plan import Plan


#: What makes a folder a run folder (any one of them).
RUN_MARKERS = ("plan.json", "run.json", "metrics.jsonl", "summary.json", "checkpoints", "final", "rollouts")
LOCK_FILE = ".lock"
#: Room kept free on top of an estimate (logs, rollouts, aim): this many bytes plus a tenth of it.
MARGIN_BYTES = 2**20


def margin(need: int) -> int:
    """Bytes asked for on top of an estimate of ``need`` bytes."""
    return MARGIN_BYTES + need // 10


class RunFolderError(FileExistsError):
    """The run folder is in use by another process, or holds a run that this command would overwrite."""


class DiskFullError(RuntimeError):
    """Not enough free space for what the run must write (the message says where, how much, and what
    is intact)."""


def fmt_bytes(n: float) -> str:
    """``1536`` -> ``1.5 KiB``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def free_bytes(path: str | Path) -> int:
    """Free bytes (for this user) on the filesystem holding ``path`` (its nearest existing parent)."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free


def folder_bytes(path: str | Path) -> int:
    """Total size of the regular files under ``path`` (bytes)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def is_disk_full(exc: BaseException, where: str | Path) -> bool:
    """Whether ``exc`` (or an exception it was raised from) is a full disk: ENOSPC/EDQUOT, a message
    saying so (torch's own writer reports it as ``unexpected pos``), or under 1 MiB left at ``where``."""
    seen = set()
    e: Optional[BaseException] = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(e) or "Disk quota exceeded" in str(e):
            return True
        e = e.__cause__ or e.__context__
    try:
        return free_bytes(where) < 2**20
    except OSError:
        return False


def require_free(where: str | Path, need: int, what: str, last_checkpoint: Optional[int] = None,
                 then: str = "run again") -> None:
    """Raise `DiskFullError` unless ``need`` bytes (plus `margin`) are free at ``where``."""
    free = free_bytes(where)
    need += margin(need)
    if free < need:
        intact = f"; the last complete checkpoint (step {last_checkpoint}) is intact" if last_checkpoint else ""
        raise DiskFullError(f"not enough disk space for {what} in {where}: {fmt_bytes(free)} free, about "
                            f"{fmt_bytes(need)} needed{intact}. Free space there, then {then}")


def checkpoint_bytes(plan: Plan) -> int:
    """Estimated size of one checkpoint of ``plan`` (bytes).

    torch trainer: fp32 weights and AdamW's two moments, 12 B/parameter (24 with a critic);
    megatron: bf16 weights plus fp32 master weights and two moments, 14 B/parameter. The
    parameter count is the architecture's (`compiler.memory.total_params`).
    """
    from compiler.memory import total_params

    n = total_params(plan.architecture)
    per = 14 if plan.trainer.backend == "megatron" else 12
    critic = 2 if plan.schedule.critic else 1
    return int(n * per * critic)


def export_bytes(plan: Plan) -> int:
    """Estimated size of the final HF export (fp32 weights, bytes); 0 when there is none."""
    from compiler.memory import total_params

    return int(total_params(plan.architecture) * 4) if plan.schedule.export_hf else 0


def check_space(plan: Plan, run_dir: Path, log: Callable[[str], None]) -> None:
    """Before the run: room for one checkpoint and the export (`DiskFullError`); a warning when the
    ``keep_last + 1`` checkpoints a save holds at once would not fit."""
    one, final = checkpoint_bytes(plan), export_bytes(plan)
    require_free(run_dir, one + final, "one checkpoint and the final export of this plan",
                 then="run again (or choose another --run-dir)")
    keep = plan.schedule.keep_checkpoints
    all_of_them = one * ((keep if keep > 0 else 1) + 1) + final
    all_of_them += margin(all_of_them)
    free = free_bytes(run_dir)
    if free < all_of_them:
        log(f"warning: {fmt_bytes(free)} free in {run_dir}, but keeping {keep} checkpoints of about "
            f"{fmt_bytes(one)} (plus the one being written and the export) needs about {fmt_bytes(all_of_them)}: "
            "the run may stop with a full disk (it stays resumable); lower checkpoint.keep_last or free space")


def holds_run(run_dir: Path) -> list[str]:
    """The run files ``run_dir`` already holds (empty: a new or unrelated folder)."""
    return [m for m in RUN_MARKERS if (run_dir / m).exists()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    """An exclusive lock on ``RUN/.lock`` (see the module docstring); `release` or process exit frees it."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / LOCK_FILE
        self.fd: Optional[int] = None

    def acquire(self) -> "RunLock":
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            try:
                holder = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
            except (OSError, ValueError):
                holder = {}
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            who = (f"process {holder.get('pid')} on {holder.get('host')} (started {holder.get('started')}: "
                   f"{holder.get('command')})" if holder else "another process")
            if holder.get("host") == socket.gethostname() and holder.get("pid") and not _alive(int(holder["pid"])):
                who += (f"; that process has ended, but one it started still holds the folder (`fuser "
                        f"{self.path}` names it)")
            raise RunFolderError(f"{self.path.parent} is in use by {who}; wait for it to finish or stop it, "
                                 "then resume with `engine run " f"{self.path.parent} --resume`") from None
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                "command": " ".join(sys.argv)[:300]}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        self.fd = fd
        # a forked child (a generator engine's worker) must not keep the lock alive after this process
        # ends: it drops its copy of the descriptor at once (the lock stays with this process)
        os.register_at_fork(after_in_child=self._forget)
        return self

    def _forget(self) -> None:
        if self.fd is not None:
            try:
                os.close(self.fd)
            except OSError:
                pass
            self.fd = None

    def release(self) -> None:
        if self.fd is not None:
            try:
                os.ftruncate(self.fd, 0)
            except OSError:
                pass
            os.close(self.fd)  # closing the descriptor drops the flock
            self.fd = None


def claim(plan: Plan, run_dir: Path, resume: bool, log: Callable[[str], None], space: bool = True) -> RunLock:
    """Lock ``run_dir``, refuse to overwrite a run in it (unless ``resume``), check the free space
    (``space``: not for a rehearsal, whose stand-ins write no weights)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = RunLock(run_dir).acquire()
    try:
        found = holds_run(run_dir)
        if found and not resume:
            raise RunFolderError(f"{run_dir} already holds a run ({', '.join(found)}); nothing was changed. "
                                 f"Continue it with `engine run {run_dir} --resume`, or choose a new --run-dir")
        if space:
            check_space(plan, run_dir, log)
    except BaseException:
        lock.release()
        raise
    return lock


def _remove_partial_exports(run_dir: Path) -> None:
    for d in run_dir.glob(".final.tmp-*"):
        shutil.rmtree(d, ignore_errors=True)


def guarded(train: Callable[..., Any]) -> Callable[..., Any]:
    """Decorator of `engine.runtime.loop.train`: the run folder is claimed (`claim`) before the body
    runs and released after it, however it ends; a full disk anywhere in the body becomes a
    `DiskFullError` naming the folder, with partial exports removed."""
    sig = inspect.signature(train)

    @functools.wraps(train)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        bound = sig.bind(*args, **kwargs)
        bound.apply_defaults()
        plan, run_dir = bound.arguments["plan"], Path(bound.arguments["run_dir"])
        log = bound.arguments.get("log") or (lambda m: print(m, file=sys.stderr))
        lock = claim(plan, run_dir, bool(bound.arguments.get("resume")), log,
                     space=bound.arguments.get("harness") is None)
        try:
            return train(*args, **kwargs)
        except (DiskFullError, KeyboardInterrupt):
            raise
        except Exception as exc:
            if not is_disk_full(exc, run_dir):
                raise
            _remove_partial_exports(run_dir)
            from engine.runtime.checkpoint import list_checkpoints

            steps = list_checkpoints(run_dir / "checkpoints")
            intact = f"the last complete checkpoint (step {steps[-1]}) is intact" if steps else "no checkpoint was written yet"
            raise DiskFullError(f"disk full while writing to {run_dir} ({type(exc).__name__}: "
                                f"{str(exc).splitlines()[0][:200] if str(exc) else ''}); {intact}. Free space there, "
                                f"then continue with `engine run {run_dir} --resume`") from exc
        finally:
            lock.release()

    return wrapper
