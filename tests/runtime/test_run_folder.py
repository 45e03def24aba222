"""The run folder's rules, with real runs: one process at a time (a lock naming the other), a run
never overwritten, free space checked before the run and before each save, a full disk ending the
run with a message and the last checkpoint intact, tracking failures reported without stopping
training, and a non-finite reward stopping the run at its step.

The full-disk tests mount a small tmpfs in a private mount namespace (``unshare -rm``); where that
is not allowed they make the checkpoint write itself raise ENOSPC instead (and say so).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from engine.cli import main
from engine.runtime import checkpoint as C
from tests.runtime.conftest import write_spec

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def run(tiny_run_copy) -> Path:
    return tiny_run_copy


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and ".aim" not in p.parts and p.name != ".lock"}


def _steps(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_a_run_folder_is_never_overwritten(run, tmp_path, capsys):
    shutil.rmtree(run / "checkpoints")  # the check that existed looked only at checkpoints
    before = _files(run)
    assert main(["run", str(write_spec(tmp_path)), "--run-dir", str(run), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "already holds a run" in err and "--resume" in err and "nothing was changed" in err
    assert _files(run) == before  # final/, metrics, rollouts, summary: byte for byte


def test_a_second_process_on_the_folder_is_refused_naming_the_first(run, capsys):
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            from pathlib import Path
            from engine.runtime.run_folder import RunLock
            RunLock(Path({str(run)!r})).acquire()
            print("locked", flush=True)
            sys.stdin.read()
        """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert main(["run", str(run), "--resume", "trainer.total_steps=6", "--quiet"]) == 1
        err = capsys.readouterr().err
        assert f"in use by process {holder.pid}" in err and "Traceback" not in err
        assert _steps(run) == [1, 2, 3, 4]
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    # the holder is gone, and with it the lock (however a process ends, the kernel drops it)
    assert main(["run", str(run), "--resume", "trainer.total_steps=6", "--quiet"]) == 0
    assert _steps(run) == [1, 2, 3, 4, 5, 6]


def test_not_enough_space_for_a_save_stops_before_writing(run, monkeypatch, capsys):
    """Before each save: room for another checkpoint as large as the last one, or nothing is written."""
    import engine.runtime.run_folder as RF

    real = RF.free_bytes
    monkeypatch.setattr(RF, "free_bytes", lambda p: 1000 if "checkpoints" in str(p) else real(p))
    assert main(["run", str(run), "--resume", "trainer.total_steps=6", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "not enough disk space for the checkpoint of step 6" in err and "step 4) is intact" in err
    assert C.list_checkpoints(run / "checkpoints") == [2, 4] and not list((run / "checkpoints").glob(".tmp-*"))
    assert C.verify_checkpoint(run / "checkpoints" / "step_000004") == []


def _can_mount() -> bool:
    return shutil.which("unshare") is not None and subprocess.run(
        ["unshare", "-rm", "true"], capture_output=True).returncode == 0


def _run_on_small_fs(tmp_path: Path, size: str, spec: Path) -> subprocess.CompletedProcess:
    """``engine run`` with its run folder on a tmpfs of ``size``; the folder is copied out afterwards."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    script = (f"mount -t tmpfs -o size={size} tmpfs {mnt} && "
              f"{sys.executable} -m engine.cli run {spec} --run-dir {mnt}/run --quiet; rc=$?; "
              f"cp -a {mnt}/run {tmp_path}/copy; exit $rc")
    return subprocess.run(["unshare", "-rm", "bash", "-c", script], capture_output=True, text=True, timeout=900,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})


@pytest.mark.slow
def test_a_full_disk_ends_the_run_with_a_message_and_the_last_checkpoint_intact(tmp_path, capsys, monkeypatch):
    spec = write_spec(tmp_path, steps=4, every=2)
    if _can_mount():
        proc = _run_on_small_fs(tmp_path, "3000k", spec)  # room for about one checkpoint and aim
        rc, err, copy = proc.returncode, proc.stderr, tmp_path / "copy"
    else:  # no mount namespace here: the second checkpoint's write raises ENOSPC itself
        import engine.runtime.checkpoint as CK

        real, calls = CK.torch.save, []

        def save(obj, f):
            calls.append(1)
            if len(calls) > 1:
                raise OSError(errno.ENOSPC, "No space left on device")
            return real(obj, f)

        print("unshare -rm is not allowed here: the ENOSPC comes from a patched torch.save")
        monkeypatch.setattr(CK.torch, "save", save)
        copy = tmp_path / "copy"
        rc = main(["run", str(spec), "--run-dir", str(copy), "--quiet"])
        err = capsys.readouterr().err
    assert rc == 1, err
    assert "disk" in err and "step 2" in err and "intact" in err and "--resume" in err
    assert "Traceback" not in err and "enforce fail" not in err
    assert C.list_checkpoints(copy / "checkpoints") == [2]
    assert C.verify_checkpoint(copy / "checkpoints" / "step_000002") == []
    assert not list((copy / "checkpoints").glob(".tmp-*"))
    # with room again the run resumes where it stopped
    assert main(["run", str(copy), "--resume", "--quiet"]) == 0
    assert _steps(copy) == [1, 2, 3, 4]


@pytest.mark.slow
@pytest.mark.skipif(not _can_mount(), reason="needs a private mount namespace (unshare -rm) for a tiny tmpfs")
def test_a_disk_too_small_for_one_checkpoint_is_refused_before_the_run(tmp_path):
    proc = _run_on_small_fs(tmp_path, "600k", write_spec(tmp_path, steps=4, every=2))
    assert proc.returncode == 1, proc.stderr
    assert "not enough disk space for one checkpoint and the final export" in proc.stderr
    assert not (tmp_path / "copy" / "metrics.jsonl").exists()  # nothing started


def test_aim_failures_are_reported_and_training_goes_on(tmp_path):
    from engine.runtime.tracking import AimTracker

    warnings: list[str] = []
    tracker = AimTracker(tmp_path, "x", {"a": 1}, warn=warnings.append)
    tracker.track(1, {"reward/mean": 0.5})
    shutil.rmtree(tmp_path / ".aim")  # a user cleaning up mid-run
    tracker.track(2, {"reward/mean": 0.6})
    tracker.track(3, {"reward/mean": 0.7})
    tracker.close()
    assert len(warnings) == 1 and "aim tracking failed" in warnings[0] and "step 2" in warnings[0]


def test_a_non_finite_reward_stops_the_run_at_its_step(tmp_path, monkeypatch, capsys):
    """The spec refuses nan/inf reward settings; a reward that is nan anyway (a custom reward, a bug)
    stops the run before that step trains."""
    import engine.reward.grader as G

    monkeypatch.setattr(G, "compute_reward", lambda config, correct, boxed: float("nan"))
    run = tmp_path / "run"
    assert main(["run", str(write_spec(tmp_path, steps=3, every=1)), "--run-dir", str(run), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "step 1:" in err and "not finite" in err and "Traceback" not in err
    assert not (run / "metrics.jsonl").exists() or _steps(run) == []
    assert C.list_checkpoints(run / "checkpoints") == []


def test_a_forked_child_does_not_keep_the_folder_locked(tmp_path):
    """A generator engine's forked worker that outlives the run must not hold its lock."""
    import time

    from engine.runtime.run_folder import RunLock

    lock = RunLock(tmp_path).acquire()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child (its fork handlers have run) lingers after the parent let go of the folder
        os.write(w, b"x")
        time.sleep(5)
        os._exit(0)
    try:
        assert os.read(r, 1) == b"x"
        lock.release()
        RunLock(tmp_path).acquire().release()  # free at once, though the child still runs
    finally:
        os.waitpid(pid, 0)
