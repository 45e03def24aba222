"""The LLM judge against servers that misbehave, on 127.0.0.1: one that accepts and never answers,
one that drips its answer a byte at a time, one that answers junk, one that fails every request.
`engine analyze` must end (exit 1, a message) within its deadline, and cache only real verdicts.

The servers are small socket / http.server programs written here: misbehaving on cue is the point,
which a real inference server does not do.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.study.judge import BEHAVIOURS, LLMJudge
from tests.study.judge_servers import GOOD, Answers as _Answers, Silent as _Silent

ROOT = Path(__file__).resolve().parents[2]




@pytest.fixture
def run(tiny_run, tmp_path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(tiny_run, out)
    return out


def _analyze(run: Path, url: str, *extra: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """`engine analyze` in its own process (a hang would show as the subprocess timeout)."""
    return subprocess.run([sys.executable, "-m", "engine.cli", "analyze", str(run), "--judge-url", url,
                           "--judge-model", "m", "--sample-per-step", "1", *extra],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)


@pytest.mark.parametrize("drip", [False, True], ids=["never-answers", "slow-drip"])
def test_engine_analyze_ends_within_its_deadline_against_a_hanging_server(run, drip):
    server = _Silent(drip=drip)
    try:
        t0 = time.monotonic()
        proc = _analyze(run, server.url, "--retries", "1", "--judge-timeout-s", "2", "--judge-deadline-s", "8",
                        "--batch-size", "4")
        took = time.monotonic() - t0
    finally:
        server.close()
    assert proc.returncode == 1, proc.stderr
    assert "no verdict came back" in proc.stderr and "Traceback" not in proc.stderr
    assert "TimeoutError" in proc.stderr or "deadline" in proc.stderr
    print(f"engine analyze ended after {took:.1f} s (deadline 8 s)")


def test_judge_request_time_is_bounded_for_a_server_that_never_answers():
    server = _Silent()
    try:
        judge = LLMJudge(server.url, "m", retries=0, timeout_s=1.0, deadline_s=30)
        out = judge.label(["a response"])
    finally:
        server.close()
    st = judge.stats()
    assert out == [{b: None for b in BEHAVIOURS}] and st["failed"] == 1 and st["requests"] == 1
    assert "TimeoutError" in st["errors"][0]


def test_junk_answers_are_not_cached_and_a_later_good_judge_is_asked(run):
    junk = _Answers("I think the response shows some verification, maybe.")
    try:
        proc = _analyze(run, junk.url)
    finally:
        junk.close()
    assert proc.returncode == 1 and "no verdict came back" in proc.stderr, proc.stderr
    asked = junk.requests
    assert asked > 0
    cache = run / "analysis" / "judge_cache.jsonl"
    assert not cache.exists() or cache.read_text().strip() == ""
    good = _Answers(GOOD)
    try:
        proc = _analyze(run, good.url)
    finally:
        good.close()
    assert proc.returncode == 0, proc.stderr
    assert good.requests == asked  # every response the junk judge could not label is asked again
    labels = [json.loads(line)["labels"] for line in cache.read_text().splitlines()]
    assert len(labels) == asked and all(lab == json.loads(GOOD) for lab in labels)


def test_every_request_failing_exits_1_and_says_why(run):
    server = _Answers(GOOD, status=500)
    try:
        proc = _analyze(run, server.url, "--retries", "1")
    finally:
        server.close()
    assert proc.returncode == 1 and "no verdict came back" in proc.stderr and "HTTP 500" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
