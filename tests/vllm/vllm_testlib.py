"""Helpers of the vLLM tests (a module with a unique name: pytest's conftest modules all share the name
``conftest``, so tests must not import from them).

Two random models, A and B (head size 32: vLLM rejects 16), with weights drawn wide enough that
greedy decoding does not just repeat the last prompt token (what a tied-embedding model at the
usual 0.02 init does, whatever its weights). The session engine starts from B; the remote one
from A. Their first greedy outputs are the "fresh engine" references the weight-update tests
compare against.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ENGINE_KW = dict(tensor_parallel_size=1, max_model_len=128, max_num_seqs=16, seed=0, dtype="float32",
                 enforce_eager=True, kv_cache_memory_bytes=32 << 20)
PROMPT_TEXTS = ("Question: 3+4", "Compute 7*8", "The answer is", "Let's think step by step")
MAX_NEW = 16


def build_model(folder: Path, seed: int, tokenizer):
    """A tiny tied-embedding Qwen2 (2 layers, hidden 64, 2 heads of 32, 1 KV head) saved with its tokenizer."""
    import torch

    from engine.modeling import random_model
    from schemas import Architecture

    arch = Architecture(family="qwen2", hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=1,
                        ffn_hidden_size=128, vocab_size=126, tied_embeddings=True, max_position_embeddings=128,
                        qkv_bias=True)
    model = random_model(arch, tokenizer, seed=seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" not in name:
                p.copy_(torch.randn(p.shape, generator=g) * (0.3 if p.dim() > 1 else 0.1))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model.eval()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Remote:
    """The generator process: send a JSON command, read its ``@@`` reply."""

    def __init__(self, model_dir: Path) -> None:
        # vLLM logs to stdout unless told not to configure logging: keep stdout for the replies, so the
        # pipe never fills while the test is busy elsewhere
        env = dict(os.environ, PYTHONPATH=str(REPO), VLLM_CONFIGURE_LOGGING="0")
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("remote_generator.py")), str(model_dir)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     text=True, env=env, cwd=str(REPO))
        self.ready = False

    def read(self) -> dict:
        for line in self.proc.stdout:
            if line.startswith("@@ "):
                return json.loads(line[3:])
        raise RuntimeError(f"generator process ended (rc {self.proc.wait()})")

    def send(self, **cmd) -> None:
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()

    def call(self, **cmd) -> dict:
        self.send(**cmd)
        return self.read()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.send(op="quit")
                self.proc.wait(timeout=15)
            except Exception:  # a test process: do not wait for a slow engine shutdown
                self.proc.kill()
                self.proc.wait()


