"""Hostile inputs and faults (issue 21): the cases a careless user and an attacker try, rerun on one checkout.

    python bench/faults/probe.py                       # this checkout
    python bench/faults/probe.py --checkout /tmp/base  # another one (e.g. `git worktree add /tmp/base 1155b1c`)
    python bench/faults/probe.py --only checkpoint     # the cases of one group (or one name)

Every case runs the real commands (`python -m engine.cli ...`) of the checkout in a child process, on
tiny real runs built here with that checkout, and is classified as one of:

* ``clean``: the expected outcome; a failure exits 1 or 2 with a message naming what failed;
* ``unclear``: no traceback, but not the expected outcome or a message that does not say what failed;
* ``traceback``: a Python traceback reached the user;
* ``hang``: the command did not end within the case's limit;
* ``silent``: exit 0 (or a wrong result) where the input should have been refused, or code from a
  file ran;
* ``lost``: files that had to stay as they were changed or disappeared.

Prints one line per case and the counts; ``--json FILE`` writes them. The size-limited filesystem
cases need ``unshare -rm`` (a tmpfs in a private mount namespace); where it is not allowed they are
left out and counted as such.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

HERE = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(HERE))
from tests.study.judge_servers import GOOD, Answers, Silent  # noqa: E402  (loopback servers that misbehave)
CATEGORIES = ("clean", "unclear", "traceback", "hang", "silent", "lost")
TRACEBACK = "Traceback (most recent call last)"


@dataclass
class Result:
    rc: Optional[int]
    out: str
    err: str
    took: float

    @property
    def hung(self) -> bool:
        return self.rc is None

    @property
    def text(self) -> str:
        return self.out + self.err

    def tail(self, n: int = 240) -> str:
        t = " ".join(self.err.strip().split())
        return t[-n:]


class Probe:
    """Runs commands of one checkout in a scratch folder."""

    def __init__(self, checkout: Path, work: Path) -> None:
        self.checkout = checkout
        self.work = work
        self.env = dict(os.environ, PYTHONPATH=str(checkout), ENGINE_CACHE_DIR=str(work / "cache"),
                        PYTHONUNBUFFERED="1")
        self.env.pop("ENGINE_DEBUG", None)
        self.n = 0

    def folder(self, name: str) -> Path:
        self.n += 1
        d = self.work / f"{self.n:02d}-{name}"
        d.mkdir(parents=True)
        return d

    def python(self, code: str, timeout: float = 300, cwd: Optional[Path] = None) -> Result:
        return self.cmd([sys.executable, "-c", code], timeout, cwd)

    def engine(self, *args: str, timeout: float = 300, cwd: Optional[Path] = None) -> Result:
        return self.cmd([sys.executable, "-m", "engine.cli", *args], timeout, cwd)

    def cmd(self, argv: list[str], timeout: float = 300, cwd: Optional[Path] = None, background: bool = False):
        t0 = time.monotonic()
        proc = subprocess.Popen(argv, cwd=str(cwd or self.work), env=self.env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
        if background:
            return proc
        return self.wait(proc, timeout, t0)

    def wait(self, proc: subprocess.Popen, timeout: float, t0: Optional[float] = None) -> Result:
        t0 = t0 or time.monotonic()
        try:
            out, err = proc.communicate(timeout=timeout)
            return Result(proc.returncode, out, err, time.monotonic() - t0)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            out, err = proc.communicate()
            return Result(None, out, err, time.monotonic() - t0)

    def spec(self, folder: Path, steps: int = 4, every: int = 2, train: str = "synthetic", extra: str = "") -> Path:
        code = (f"from pathlib import Path\nfrom tests.runtime.conftest import write_spec\n"
                f"print(write_spec(Path({str(folder)!r}), steps={steps}, every={every}, train={train!r}, extra={extra!r}))")
        r = self.python(code, cwd=self.checkout)
        assert r.rc == 0, r.err
        return Path(r.out.strip())


def digest(paths: list[Path]) -> dict[str, str]:
    """sha256 of every file under ``paths`` (what must not change)."""
    out = {}
    for p in paths:
        for f in sorted([p] if p.is_file() else p.rglob("*") if p.exists() else []):
            if f.is_file():
                out[str(f)] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def expect_failure(r: Result, must: tuple[str, ...] = (), before: Optional[dict] = None,
                   after: Optional[dict] = None, ran: bool = False) -> tuple[str, str]:
    """Classify a command that had to refuse its input."""
    if before is not None and before != after:
        return "lost", f"{sum(before.get(k) != after.get(k) for k in before)} protected file(s) changed or gone"
    if ran:
        return "silent", "code from the input ran"
    if r.hung:
        return "hang", f"killed after {r.took:.0f} s"
    if TRACEBACK in r.text:
        return "traceback", r.tail()
    if r.rc == 0:
        return "silent", "exit 0: " + r.tail(160)
    missing = [m for m in must if m.lower() not in r.text.lower()]
    if r.rc not in (1, 2) or missing:
        return "unclear", f"exit {r.rc}, message lacks {missing}: " + r.tail(160)
    return "clean", f"exit {r.rc}: " + r.tail(160)


def expect_success(r: Result, ok: bool, why: str = "", before: Optional[dict] = None,
                   after: Optional[dict] = None) -> tuple[str, str]:
    """Classify a command that had to succeed (and produce a right result: ``ok``)."""
    if before is not None and before != after:
        return "lost", "protected files changed or gone"
    if r.hung:
        return "hang", f"killed after {r.took:.0f} s"
    if TRACEBACK in r.text:
        return "traceback", r.tail()
    if r.rc != 0:
        return "unclear", f"exit {r.rc}: " + r.tail(160)
    if not ok:
        return "silent", why or "wrong result"
    return "clean", why or "ok"


# -- shared fixtures ---------------------------------------------------------------------------------

class Fixtures:
    """A finished tiny run (4 steps, checkpoints at 2 and 4, final/), built once with the checkout."""

    def __init__(self, p: Probe) -> None:
        self.p = p
        self._run: Optional[Path] = None

    @property
    def run(self) -> Path:
        if self._run is None:
            d = self.p.folder("fixture")
            spec = self.p.spec(d)
            r = self.p.engine("run", str(spec), "--run-dir", str(d / "run"), "--quiet", timeout=900)
            assert r.rc == 0, r.err[-2000:]
            self._run = d / "run"
        return self._run

    def copy(self, name: str) -> Path:
        d = self.p.folder(name)
        shutil.copytree(self.run, d / "run")
        return d / "run"


def _payload_pickle(marker: Path) -> bytes:
    """A torch file whose unpickling writes ``marker`` (what an attacker would put in a run folder)."""
    import io

    import torch

    class Payload:
        def __reduce__(self):
            return (exec, (f"open({str(marker)!r}, 'w').write('ran')",))

    buf = io.BytesIO()
    torch.save({"model": Payload(), "optimizer": {}, "scheduler": {}, "rng": Payload()}, buf)
    return buf.getvalue()


def _update_checksum(step_dir: Path, rel: str) -> None:
    """What an attacker also does: rewrite checksums.json (when there is one) for a replaced file."""
    sums = step_dir / "checksums.json"
    if sums.exists():
        doc = json.loads(sums.read_text())
        data = (step_dir / rel).read_bytes()
        doc["files"][rel] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        sums.write_text(json.dumps(doc))


def _flip_tensor_byte(path: Path) -> None:
    """Flip one byte in the middle of the largest tensor stored in a torch zip file."""
    with zipfile.ZipFile(path) as z:
        info = max(z.infolist(), key=lambda i: i.file_size)
        with open(path, "rb") as f:
            f.seek(info.header_offset + 26)
            n, m = int.from_bytes(f.read(2), "little"), int.from_bytes(f.read(2), "little")
        offset = info.header_offset + 30 + n + m + info.file_size // 2
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x5A]))


def _steps(run: Path) -> list[int]:
    try:
        return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    except (OSError, ValueError, KeyError):
        return []


# -- the cases -------------------------------------------------------------------------------------

def cases(p: Probe, fx: Fixtures) -> dict[str, tuple[str, Callable[[], tuple[str, str]]]]:
    """name -> (group, case)."""
    out: dict[str, tuple[str, Callable[[], tuple[str, str]]]] = {}

    def case(group: str):
        def deco(fn):
            out[fn.__name__] = (group, fn)
            return fn
        return deco

    # specs
    @case("spec")
    def plan_inf_lr():
        d = p.folder("inf-lr")
        return expect_failure(p.engine("plan", str(p.spec(d)), "trainer.lr=.inf"), ("trainer.lr",))

    @case("spec")
    def run_nan_reward():
        d = p.folder("nan-reward")
        r = p.engine("run", str(p.spec(d, steps=2)), "reward.correct=.nan", "--run-dir", str(d / "run"), "--quiet")
        return expect_failure(r, ("reward.correct",))

    @case("spec")
    def plan_nan_in_yaml():
        d = p.folder("nan-yaml")
        spec = p.spec(d)
        spec.write_text(spec.read_text().replace("rollout: {backend: hf, n: 4}", "rollout: {backend: hf, n: 4, temperature: .nan}"))
        return expect_failure(p.engine("plan", str(spec)), ("temperature",))

    @case("spec")
    def yaml_alias_bomb():
        d = p.folder("alias-bomb")
        lines = ["b0: &b0 [x, x, x, x, x, x, x, x, x, x]"]
        lines += [f"b{i}: &b{i} [" + ", ".join([f"*b{i - 1}"] * 10) + "]" for i in range(1, 9)]  # 10**8 values
        spec = p.spec(d)
        spec.write_text(spec.read_text() + "\nbomb:\n" + "".join(f"  {ln}\n" for ln in lines))
        return expect_failure(p.engine("plan", str(spec), timeout=120), ("alias",))

    @case("spec")
    def yaml_recursive_alias():
        d = p.folder("alias-loop")
        spec = d / "loop.yaml"
        spec.write_text("a: &a\n  b: *a\n")
        return expect_failure(p.engine("plan", str(spec), timeout=120), ("alias",))

    # data
    @case("data")
    def train_rows_not_objects_and_not_utf8():
        d = p.folder("bad-rows")
        code = ("import json\nfrom engine.data.synthetic import generate_rows\n"
                f"rows = generate_rows(40, [1, 2], seed=0)\nf = open({str(d / 'train.jsonl')!r}, 'wb')\n"
                "for r in rows: f.write((json.dumps(r) + '\\n').encode())\n"
                "f.write(b'7\\n'); f.write(b'[1, 2]\\n'); f.write(b'{\"prompt\": \"\\xff\\xfe bad\"}\\n')\n")
        assert p.python(code, cwd=p.checkout).rc == 0
        spec = p.spec(d, steps=1, every=1, train=str(d / "train.jsonl"))
        r = p.engine("run", str(spec), "--run-dir", str(d / "run"), "--quiet")
        try:
            bad = json.loads((d / "run" / "run.json").read_text())["data_train"]["bad_rows"]
        except (OSError, ValueError, KeyError, TypeError):
            bad = None
        return expect_success(r, bad == 3, f"bad rows counted: {bad} (3 written)")

    @case("data")
    def train_parquet_truncated():
        d = p.folder("trunc-parquet")
        code = ("from engine.data.synthetic import generate_rows\nfrom engine.data.prompts import write_parquet\n"
                f"write_parquet(generate_rows(40, [1, 2], seed=0), {str(d / 'train.parquet')!r})\n")
        assert p.python(code, cwd=p.checkout).rc == 0
        data = (d / "train.parquet").read_bytes()
        (d / "train.parquet").write_bytes(data[:len(data) // 2])
        spec = p.spec(d, steps=1, every=1, train=str(d / "train.parquet"))
        return expect_failure(p.engine("run", str(spec), "--run-dir", str(d / "run"), "--quiet"), ("train.parquet",))

    @case("data")
    def data_simplerl_not_utf8():
        d = p.folder("gsm8k-bytes")
        rows = [json.dumps({"question": f"What is {i} + {i}?", "answer": f"{i} + {i} = {2 * i}\n#### {2 * i}"})
                for i in range(1, 30)]
        (d / "gsm8k.jsonl").write_bytes(("\n".join(rows) + "\n").encode() + b"{\"question\": \"\xff\"}\n")
        (d / "none").mkdir()
        r = p.engine("data", "simplerl", "--gsm8k", str(d / "gsm8k.jsonl"), "--out", str(d / "out"),
                     "--benchmarks", str(d / "none"), "--size", "0", "--val-size", "2")
        return expect_success(r, "bad" in r.text.lower() or "utf-8" in r.text.lower(), "the bad line is counted")

    # run folders
    @case("run-folder")
    def run_over_a_finished_run_without_checkpoints():
        run = fx.copy("overwrite")
        shutil.rmtree(run / "checkpoints")
        before = digest([run / "final", run / "metrics.jsonl", run / "rollouts", run / "summary.json"])
        spec = p.spec(run.parent)
        r = p.engine("run", str(spec), "--run-dir", str(run), "--quiet")
        after = digest([run / "final", run / "metrics.jsonl", run / "rollouts", run / "summary.json"])
        return expect_failure(r, (str(run.name),), before, after)

    @case("run-folder")
    def run_dir_is_a_file():
        d = p.folder("run-dir-file")
        (d / "run").write_text("not a folder")
        before = digest([d / "run"])
        r = p.engine("run", str(p.spec(d)), "--run-dir", str(d / "run"), "--quiet")
        return expect_failure(r, ("run",), before, digest([d / "run"]))

    @case("run-folder")
    def two_runs_on_one_folder():
        d = p.folder("two-runs")
        spec = p.spec(d, steps=40, every=20)
        first = p.cmd([sys.executable, "-m", "engine.cli", "run", str(spec), "--run-dir", str(d / "run"), "--quiet"],
                      background=True)
        t0 = time.monotonic()
        while not _steps(d / "run") and time.monotonic() - t0 < 600 and first.poll() is None:
            time.sleep(0.5)
        second = p.engine("run", str(d / "run"), "--resume", "--quiet", timeout=300)
        r1 = p.wait(first, 900)
        if r1.rc != 0:
            return "lost", f"the first run failed: {r1.tail()}"
        return expect_failure(second, ("in use",))

    @case("run-folder")
    def resume_with_garbled_plan_json():
        run = fx.copy("garbled-plan")
        (run / "plan.json").write_text('{"version": 2, "spec": {')
        return expect_failure(p.engine("run", str(run), "--resume", "--quiet"), ("plan.json",))

    @case("run-folder")
    def aim_repo_deleted_mid_run():
        d = p.folder("aim-deleted")
        spec = p.spec(d, steps=8, every=4)
        proc = p.cmd([sys.executable, "-m", "engine.cli", "run", str(spec), "--run-dir", str(d / "run"), "--quiet"],
                     background=True)
        t0 = time.monotonic()
        while len(_steps(d / "run")) < 2 and time.monotonic() - t0 < 600 and proc.poll() is None:
            time.sleep(0.2)
        shutil.rmtree(d / "run" / ".aim", ignore_errors=True)
        r = p.wait(proc, 900)
        return expect_success(r, _steps(d / "run") == list(range(1, 9)), f"steps logged: {_steps(d / 'run')}")

    # checkpoints
    def _resume(run: Path, *extra: str) -> Result:
        return p.engine("run", str(run), "--resume", "trainer.total_steps=6", "--quiet", *extra)

    @case("checkpoint")
    def payload_in_trainer_pt_on_resume():
        run = fx.copy("payload-trainer")
        marker = run.parent / "PWNED"
        step = run / "checkpoints" / "step_000004"
        (step / "trainer" / "trainer.pt").write_bytes(_payload_pickle(marker))
        _update_checksum(step, "trainer/trainer.pt")
        r = _resume(run)
        return expect_failure(r, ("trainer.pt",), ran=marker.exists())

    @case("checkpoint")
    def payload_in_state_pt_on_resume():
        run = fx.copy("payload-state")
        marker = run.parent / "PWNED"
        step = run / "checkpoints" / "step_000004"
        (step / "state.pt").write_bytes(_payload_pickle(marker))
        _update_checksum(step, "state.pt")
        return expect_failure(_resume(run), ("state.pt",), ran=marker.exists())

    @case("checkpoint")
    def payload_in_trainer_pt_on_eval():
        run = fx.copy("payload-eval")
        marker = run.parent / "PWNED"
        step = run / "checkpoints" / "step_000004"
        (step / "trainer" / "trainer.pt").write_bytes(_payload_pickle(marker))
        _update_checksum(step, "trainer/trainer.pt")
        r = p.engine("eval", str(step))
        return expect_failure(r, ("trainer.pt",), ran=marker.exists())

    @case("checkpoint")
    def flipped_byte_in_trainer_pt():
        run = fx.copy("flipped")
        _flip_tensor_byte(run / "checkpoints" / "step_000004" / "trainer" / "trainer.pt")
        return expect_failure(_resume(run), ("trainer.pt",))

    @case("checkpoint")
    def flipped_byte_on_eval():
        run = fx.copy("flipped-eval")
        step = run / "checkpoints" / "step_000004"
        _flip_tensor_byte(step / "trainer" / "trainer.pt")
        return expect_failure(p.engine("eval", str(step)), ("trainer.pt",))

    @case("checkpoint")
    def truncated_trainer_pt():
        run = fx.copy("truncated")
        f = run / "checkpoints" / "step_000004" / "trainer" / "trainer.pt"
        f.write_bytes(f.read_bytes()[:1000])
        return expect_failure(_resume(run), ("trainer.pt",))

    @case("checkpoint")
    def empty_state_pt():
        run = fx.copy("empty-state")
        (run / "checkpoints" / "step_000004" / "state.pt").write_bytes(b"")
        return expect_failure(_resume(run), ("state.pt",))

    @case("checkpoint")
    def resume_from_previous_after_corrupt_latest():
        run = fx.copy("previous")
        _flip_tensor_byte(run / "checkpoints" / "step_000004" / "trainer" / "trainer.pt")
        r = _resume(run, "--from-previous")
        steps = _steps(run)
        return expect_success(r, steps == list(range(1, 7)), f"steps logged: {steps}")

    # disk
    def _small_fs(size: str, name: str) -> tuple[Result, Path, Path]:
        d = p.folder(name)
        spec = p.spec(d)
        mnt, copy = d / "mnt", d / "copy"
        mnt.mkdir()
        script = (f"mount -t tmpfs -o size={size} tmpfs {mnt} && "
                  f"timeout -s KILL 300 {sys.executable} -m engine.cli run {spec} --run-dir {mnt}/run --quiet; "
                  f"rc=$?; cp -a {mnt}/run {copy} 2>/dev/null; exit $rc")
        r = p.cmd(["unshare", "-rm", "bash", "-c", script], timeout=400)
        if r.rc == 137:
            r = Result(None, r.out, r.err, r.took)
        return r, d, copy

    @case("disk")
    def disk_full_during_a_checkpoint():
        r, d, copy = _small_fs("3000k", "disk-3m")
        kept = sorted(x.name for x in (copy / "checkpoints").glob("step_*")) if copy.exists() else []
        intact = all((copy / "checkpoints" / k / "meta.json").exists() for k in kept)
        if r.hung:
            return "hang", f"killed after {r.took:.0f} s"
        if not intact:
            return "lost", f"checkpoints {kept} incomplete"
        return expect_failure(r, ("disk",))

    @case("disk")
    def disk_full_early():
        r, d, copy = _small_fs("1800k", "disk-1.8m")
        return expect_failure(r, ("disk",))

    @case("disk")
    def resume_after_disk_full():
        r, d, copy = _small_fs("3000k", "disk-resume")
        if not copy.exists():
            return "lost", "no run folder left"
        r2 = p.engine("run", str(copy), "--resume", "--quiet")
        return expect_success(r2, _steps(copy) == [1, 2, 3, 4], f"steps logged: {_steps(copy)}")

    # grader
    @case("grade")
    def grade_out_is_the_input():
        d = p.folder("grade-same")
        f = d / "answers.jsonl"
        f.write_text("".join(json.dumps({"response": f"\\boxed{{{i}}}", "ground_truth": str(i)}) + "\n"
                             for i in range(20)))
        before = digest([f])
        r = p.engine("grade", str(f), "--out", str(f), "--workers", "0")
        return expect_failure(r, ("--out",), before, digest([f]))

    @case("grade")
    def grade_out_is_a_folder():
        d = p.folder("grade-folder")
        (d / "a.jsonl").write_text(json.dumps({"response": "\\boxed{1}", "ground_truth": "1"}) + "\n")
        return expect_failure(p.engine("grade", str(d / "a.jsonl"), "--out", str(d)), ("folder",))

    @case("grade")
    def grade_towers_in_process():
        d = p.folder("grade-towers")
        towers = ["e^{e^{e^{100}}}", "\\lfloor e^{e^{e^3}}\\rfloor", "\\exp(\\exp(\\exp(100)))"]
        (d / "a.jsonl").write_text("".join(json.dumps({"response": f"so \\boxed{{{t}}}", "ground_truth": "5"}) + "\n"
                                           for t in towers))
        r = p.engine("grade", str(d / "a.jsonl"), "--out", str(d / "out.jsonl"), "--workers", "0", timeout=150)
        try:
            rows = [json.loads(x) for x in (d / "out.jsonl").read_text().splitlines()]
        except (OSError, ValueError):
            rows = []
        return expect_success(r, len(rows) == 3 and not any(x["correct"] for x in rows), f"{len(rows)} graded")

    # judge
    def _analyze(run: Path, url: str, timeout: float = 300) -> Result:
        extra = ["--judge-timeout-s", "5", "--judge-deadline-s", "30"] if _supports(p, "--judge-deadline-s") else []
        return p.engine("analyze", str(run), "--judge-url", url, "--judge-model", "m", "--retries", "1",
                        "--sample-per-step", "1", *extra, timeout=timeout)

    @case("judge")
    def judge_never_answers():
        s = Silent()
        try:
            return expect_failure(_analyze(fx.copy("judge-silent"), s.url), ("127.0.0.1",))
        finally:
            s.close()

    @case("judge")
    def judge_slow_drip():
        s = Silent(drip=True)
        try:
            return expect_failure(_analyze(fx.copy("judge-drip"), s.url), ("127.0.0.1",))
        finally:
            s.close()

    @case("judge")
    def judge_every_request_fails():
        s = Answers(GOOD, status=500)
        try:
            return expect_failure(_analyze(fx.copy("judge-500"), s.url), ("127.0.0.1",))
        finally:
            s.close()

    @case("judge")
    def judge_junk_is_not_cached():
        run = fx.copy("judge-junk")
        junk = Answers("probably some verification")
        try:
            first = _analyze(run, junk.url)
        finally:
            junk.close()
        good = Answers(GOOD)
        try:
            r = _analyze(run, good.url)
        finally:
            good.close()
        if first.rc == 0:
            return "silent", "no verdict came back, exit 0"
        return expect_success(r, good.requests == junk.requests > 0,
                              f"a good judge asked {good.requests} of the {junk.requests} junk answers again")

    # report, analyze, eval
    @case("report")
    def report_garbled_metrics_line():
        run = fx.copy("garbled-metrics")
        with open(run / "metrics.jsonl", "a") as f:
            f.write('{"step": 5, "reward/me\n')
        r = p.engine("report", str(run), "--out", str(run.parent / "report"))
        return expect_success(r, (run.parent / "report" / "index.html").exists(), "report written")

    @case("report")
    def report_truncated_rollouts_parquet():
        run = fx.copy("trunc-rollouts")
        f = sorted((run / "rollouts").glob("*.parquet"))[0]
        f.write_bytes(f.read_bytes()[:200])
        return expect_failure(p.engine("report", str(run), "--out", str(run.parent / "report")), (f.name,))

    @case("report")
    def analyze_truncated_rollouts_parquet():
        run = fx.copy("trunc-analyze")
        f = sorted((run / "rollouts").glob("*.parquet"))[0]
        f.write_bytes(f.read_bytes()[:200])
        return expect_failure(p.engine("analyze", str(run)), (f.name,))

    @case("eval")
    def eval_garbled_plan_json():
        run = fx.copy("eval-plan")
        (run / "plan.json").write_text("[1, 2")
        return expect_failure(p.engine("eval", str(run)), ("plan.json",))

    @case("eval")
    def eval_truncated_final():
        run = fx.copy("eval-final")
        f = run / "final" / "model.safetensors"
        f.write_bytes(f.read_bytes()[:100])
        return expect_failure(p.engine("eval", str(run)), ("final",))

    return out


_SUPPORT: dict[str, bool] = {}


def _supports(p: Probe, flag: str) -> bool:
    if flag not in _SUPPORT:
        _SUPPORT[flag] = flag in p.engine("analyze", "--help", timeout=120).out
    return _SUPPORT[flag]


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkout", default=str(HERE), help="the checkout to probe (default: this one)")
    ap.add_argument("--only", default="", help="a group or case name (comma-separated)")
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = ap.parse_args(argv)
    checkout = Path(args.checkout).resolve()
    work = Path(tempfile.mkdtemp(prefix="engine-probe-"))
    p = Probe(checkout, work)
    fx = Fixtures(p)
    selected = {k: v for k, v in cases(p, fx).items()
                if not args.only or any(s in (k, v[0]) for s in args.only.split(","))}
    can_mount = subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode == 0
    results = []
    for name, (group, fn) in selected.items():
        if group == "disk" and not can_mount:
            results.append({"case": name, "group": group, "category": "not run", "detail": "unshare -rm not allowed"})
            continue
        t0 = time.monotonic()
        try:
            cat, detail = fn()
        except Exception as exc:  # noqa: BLE001 - a broken probe is reported, not hidden
            cat, detail = "probe error", f"{type(exc).__name__}: {exc}"
        results.append({"case": name, "group": group, "category": cat, "detail": detail,
                        "seconds": round(time.monotonic() - t0, 1)})
        print(f"{cat:10s} {group:10s} {name:45s} {detail[:150]}", flush=True)
    counts = {c: sum(r["category"] == c for r in results) for c in (*CATEGORIES, "not run", "probe error")}
    print(f"\nchecked out: {checkout} ({_head(checkout)})\ncases tried: {len(results)}  "
          + "  ".join(f"{k}: {v}" for k, v in counts.items() if v or k in CATEGORIES))
    if args.json:
        Path(args.json).write_text(json.dumps({"checkout": str(checkout), "commit": _head(checkout),
                                               "counts": counts, "cases": results}, indent=2))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def _head(checkout: Path) -> str:
    r = subprocess.run(["git", "-C", str(checkout), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return r.stdout.strip() or "?"


if __name__ == "__main__":
    sys.exit(main())
