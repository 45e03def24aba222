"""The LLM judge against servers that misbehave, on 127.0.0.1: one that accepts and never answers,
one that drips its answer a byte at a time, one that answers junk, one that fails every request.
`engine analyze` must end (exit 1, a message) within its deadline, and cache only real verdicts.

The servers are small socket / http.server programs written here: misbehaving on cue is the point,
which a real inference server does not do.
"""

from __future__ import annotations

import http.server
import json
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from engine.study.judge import BEHAVIOURS, LLMJudge

ROOT = Path(__file__).resolve().parents[2]


class _Silent:
    """Accepts connections and never sends a byte (``drip``: sends one byte of a header every 0.3 s)."""

    def __init__(self, drip: bool = False) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.drip = drip
        self.conns: list[socket.socket] = []
        self.stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}/v1"

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.conns.append(conn)
            if self.drip:
                threading.Thread(target=self._drip, args=(conn,), daemon=True).start()

    def _drip(self, conn: socket.socket) -> None:
        msg = b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 100000
        for i in range(len(msg)):
            if self.stop.is_set():
                return
            try:
                conn.sendall(msg[i:i + 1])
            except OSError:
                return
            time.sleep(0.3)

    def close(self) -> None:
        self.stop.set()
        for c in self.conns:
            c.close()
        self.sock.close()


class _Answers(http.server.ThreadingHTTPServer):
    """A chat-completions endpoint answering every request with ``content`` (or ``status``)."""

    def __init__(self, content: str = "", status: int = 200) -> None:
        outer = self
        self.requests = 0

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                outer.requests += 1
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                body = json.dumps({"choices": [{"message": {"content": content}}]}).encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def close(self) -> None:
        self.shutdown()
        self.server_close()


GOOD = json.dumps({"verification": True, "backtracking": False, "subgoal_setting": True, "enumeration": False})


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
