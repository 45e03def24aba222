"""Metrics: an aim run (repo inside the run folder), ``metrics.jsonl``, and the live progress bar."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Optional

from engine.core.duration import fmt_duration


class MetricsLog:
    """Appends one JSON object per step to ``metrics.jsonl``.

    On resume the file is first cut back to the steps at or before the checkpoint, so the log holds
    each step exactly once.
    """

    def __init__(self, path: str | Path, resume_step: int = 0) -> None:
        self.path = Path(path)
        if self.path.exists():
            keep = []
            with self.path.open() as f:
                for line in f:
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError:
                        continue  # a line cut by a crash
                    if rec.get("step", 0) <= resume_step:
                        keep.append(line if line.endswith("\n") else line + "\n")
            tmp = self.path.with_suffix(".jsonl.tmp")
            tmp.write_text("".join(keep))
            os.replace(tmp, self.path)

    def write(self, step: int, metrics: dict[str, float]) -> None:
        """Append ``metrics`` for ``step`` (flushed and fsynced)."""
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, **metrics}, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def read(self) -> list[dict]:
        """All records."""
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]


def _bounded(fn, timeout_s: float) -> None:
    """Run ``fn()`` in a daemon thread and wait at most ``timeout_s`` seconds; its exception is re-raised,
    a call still running after the wait raises TimeoutError (the thread is left behind, never joined)."""
    import threading

    box: dict[str, BaseException] = {}

    def target() -> None:
        try:
            fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            box["exc"] = exc

    t = threading.Thread(target=target, daemon=True, name="aim-close")
    t.start()
    t.join(timeout_s)
    if t.is_alive():
        raise TimeoutError(f"still running after {timeout_s:.0f} s")
    if "exc" in box:
        raise box["exc"]


#: aim stores given up after a write failure: kept referenced (never flushed, never freed) until exit.
_ABANDONED: list[Any] = []


def _abandon_stores(repo_path: str) -> None:
    """Give up aim's RocksDB stores under ``repo_path`` after a write failed.

    aim flushes every store at exit (an ``atexit`` hook that waits for it); a store whose disk is full
    never finishes that flush, so the process would never exit. The stores' exit flushes are cancelled
    and the stores themselves kept referenced, so neither a flush nor a destructor runs on them.
    """
    try:
        from aim.ext.cleanup import AutoClean
    except Exception:  # noqa: BLE001
        return
    root = str(Path(repo_path).resolve())
    for instance, (_priority, finalizer) in list(AutoClean._finalizers.items()):
        path = getattr(instance, "path", None) or getattr(getattr(instance, "repo", None), "path", None)
        if path is not None and str(Path(str(path)).resolve()).startswith(root):
            finalizer.detach()
            _ABANDONED.append(instance)


class _NoCheckIns:
    def check_in(self, *args: Any, **kwargs: Any) -> None:
        pass


def _stop_heartbeat(run: Any) -> None:
    """Stop aim's heartbeat thread of ``run`` without letting it write again (its files may be gone)."""
    hb = getattr(run, "_heartbeat", None)
    if hb is not None and hasattr(hb, "stop_signal"):
        hb.touch_path = None
        hb.status_reporter = _NoCheckIns()
        hb.stop_signal.set()


class AimTracker:
    """An aim run stored in ``RUN/.aim`` (``aim up --repo RUN`` shows it); resumes the same run hash.

    Tracking never stops training: a failure to write (a full disk, the ``.aim`` folder deleted mid-run)
    is reported once through ``warn`` and tracking ends for the run, while ``metrics.jsonl`` keeps every
    step; closing is bounded by ``close_timeout_s`` so a stuck store cannot hang the run's exit.
    """

    def __init__(self, run_dir: str | Path, experiment: str, params: dict[str, Any],
                 run_hash: Optional[str] = None, warn=None, close_timeout_s: float = 60.0) -> None:
        from aim import Repo, Run

        self.warn = warn or (lambda m: print(m, file=sys.stderr))
        self.failed: Optional[str] = None
        self.close_timeout_s = close_timeout_s

        repo_path = str(run_dir)
        self.repo_path = repo_path
        if not (Path(repo_path) / ".aim").exists():
            Repo.from_path(repo_path, init=True)
        # No force_resume: aim itself removes the lock of a run whose process is gone (SIGKILL); a
        # run closed on exit or Ctrl-C (`close`) leaves none. Forcing would warn of data corruption on
        # every resume, and would also take the lock from a process that is still writing.
        from aim.sdk.errors import RunLockingError

        try:
            self.run = Run(run_hash=run_hash, repo=repo_path, experiment=experiment, force_resume=False,
                           system_tracking_interval=None, capture_terminal_logs=False)
        except RunLockingError as e:
            raise RuntimeError(f"the aim run {run_hash} in {repo_path} is locked by a live process (is this run "
                               f"still going?): {e}") from None
        self._closed = False
        for k, v in params.items():
            self.run[k] = v

    @property
    def hash(self) -> str:
        """The aim run hash (stored in the run folder so a resume continues the same run)."""
        return self.run.hash

    def _fail(self, what: str, exc: BaseException) -> None:
        self.failed = f"{what}: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
        _stop_heartbeat(self.run)
        _abandon_stores(self.repo_path)
        rest = ("metrics.jsonl holds every step" if what.startswith("closing") else
                "tracking stops here, training goes on and metrics.jsonl keeps every step")
        self.warn(f"warning: aim tracking failed ({self.failed}); {rest}")

    def track(self, step: int, metrics: dict[str, float]) -> None:
        """Track every finite number under its name (``a/b`` names become context-free keys); after a
        failure (reported once) this does nothing."""
        if self.failed:
            return
        if not (Path(self.repo_path) / ".aim").is_dir():
            self._fail(f"step {step}", FileNotFoundError(f"{Path(self.repo_path) / '.aim'} was deleted"))
            return
        try:
            for k, v in metrics.items():
                if isinstance(v, (int, float)) and math.isfinite(float(v)):
                    self.run.track(float(v), name=k.replace("/", "."), step=step)
        except Exception as exc:  # noqa: BLE001 - any tracking failure: reported, training goes on
            self._fail(f"step {step}", exc)

    def close(self) -> None:
        """Flush and close the run (releasing its lock), then index it so `aim` queries (and
        `Repo.get_run`) see it at once. A second call does nothing; a failure is reported, not raised."""
        if self._closed:
            return
        self._closed = True
        run_hash, repo = self.run.hash, self.run.repo
        import shutil

        try:
            full = shutil.disk_usage(self.repo_path).free < 2**20
        except OSError:
            full = False
        if not self.failed and not (Path(self.repo_path) / ".aim").is_dir():
            self._fail("closing the run", FileNotFoundError(f"{Path(self.repo_path) / '.aim'} was deleted"))
        if full and not self.failed:  # aim's flush would wait for room forever
            self._fail("closing the run", OSError(28, "No space left on device; its last writes are not flushed"))
        if self.failed:
            return
        try:
            _bounded(self.run.close, self.close_timeout_s)
        except Exception as exc:  # noqa: BLE001
            if not self.failed:
                self._fail("closing the run", exc)
            return
        if self.failed:
            return
        try:
            from aim.sdk.index_manager import RepoIndexManager

            RepoIndexManager.get_index_manager(repo).index(run_hash)
        except Exception:  # indexing is an optimisation; `aim up` indexes finished runs itself
            pass


class Progress:
    """One live line per step: reward, accuracy, response length, step time and ETA.

    On a terminal the line is redrawn in place as a bar; otherwise (logs, tests) one line per step
    is printed.
    """

    def __init__(self, total_steps: int, start_step: int = 0, stream=None) -> None:
        self.total = total_steps
        self.start = start_step
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.t0 = time.perf_counter()

    def update(self, step: int, m: dict[str, float]) -> None:
        """Show step ``step`` (1-based) with its metrics."""
        done = step - self.start
        elapsed = time.perf_counter() - self.t0
        eta = elapsed / max(done, 1) * (self.total - step)
        text = (f"step {step}/{self.total} | reward {m.get('reward/mean', float('nan')):.3f} "
                f"| acc {m.get('reward/accuracy', float('nan')):.3f} "
                f"| len {m.get('response_length/mean', float('nan')):.1f} "
                f"| {m.get('time/step_s', float('nan')):.2f}s/step | ETA {fmt_duration(eta)}")
        if self.tty:
            width = 24
            fill = int(width * step / max(self.total, 1))
            bar = "#" * fill + "-" * (width - fill)
            self.stream.write(f"\r[{bar}] {text}\x1b[K")
            if step >= self.total:
                self.stream.write("\n")
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def message(self, text: str) -> None:
        """Print a line without breaking the bar."""
        self.stream.write(("\r\x1b[K" if self.tty else "") + text + "\n")
        self.stream.flush()
