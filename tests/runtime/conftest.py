"""Shared fixtures: a tiny spec (random-init Qwen2 + builtin tokenizer + synthetic data) compiled to a plan."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

TINY_SPEC = """
name: tiny
seed: 3
model:
  name: tiny-qwen2
  init: random
  tokenizer: builtin
  pretrain_steps: {pretrain_steps}
  dtype: float32
  gradient_checkpointing: false
  architecture: {{family: qwen2, hidden_size: 32, num_layers: 2, num_heads: 4, num_kv_heads: 2,
                 ffn_hidden_size: 64, vocab_size: 126, tied_embeddings: true,
                 max_position_embeddings: 128, qkv_bias: true}}
data:
  train: {train}
  val: {val}
  prompt_template: simple
  train_batch_size: 4
  max_prompt_length: 64
  max_response_length: 12
  synthetic: {{size: 64, levels: [1, 2], val_size: 8}}
algorithm: {{ppo_mini_batch_size: 2, kl_coef: 0.001, entropy_coef: 0.001}}
reward: {{format: none, workers: 0}}
rollout: {{backend: hf, n: 4}}
trainer: {{backend: torch, micro_batch_size: 4, log_prob_micro_batch_size: 8, lr: 0.001, total_steps: {steps}}}
cluster: {{accelerator: cpu, nodes: 1, gpus_per_node: 0, cpu_threads: 1}}
checkpoint: {{every: {every}, keep_last: 2}}
tracking: {{experiment: tiny}}
evaluation: {{every: {eval_every}, benchmarks: [], max_response_length: 12, batch_size: 4}}
"""


def write_spec(folder: Path, *, steps: int = 2, every: int = 1, eval_every: int = 0, pretrain_steps: int = 0,
               train: str = "synthetic", val: str = "synthetic", extra: str = "") -> Path:
    """A tiny spec file in ``folder``; returns its path."""
    path = folder / "tiny.yaml"
    path.write_text(textwrap.dedent(TINY_SPEC.format(steps=steps, every=every, eval_every=eval_every,
                                                     pretrain_steps=pretrain_steps, train=train, val=val)) + extra)
    return path


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path_factory, monkeypatch):
    """Built base models go to a per-session cache, never to the user's home."""
    monkeypatch.setenv("ENGINE_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "engine-cache"))


@pytest.fixture
def tiny_spec(tmp_path):
    return write_spec(tmp_path)


@pytest.fixture(scope="session")
def tokenizer():
    from engine.quickstart.tokenizer import build_tokenizer

    return build_tokenizer()


@pytest.fixture
def tiny_model(tokenizer):
    from schemas import Architecture
    from engine.modeling import random_model

    arch = Architecture(family="qwen2", hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                        ffn_hidden_size=64, vocab_size=126, tied_embeddings=True, max_position_embeddings=128,
                        qkv_bias=True)
    return random_model(arch, tokenizer, seed=0).eval()


@pytest.fixture(scope="session")
def finished_tiny_run(tmp_path_factory) -> Path:
    """A finished tiny run folder (4 steps, checkpoints at steps 2 and 4, final/), trained once per
    session; copy it before changing it."""
    import os

    from engine.cli import main

    folder = tmp_path_factory.mktemp("finished-run")
    old = os.environ.get("ENGINE_CACHE_DIR")
    os.environ["ENGINE_CACHE_DIR"] = str(tmp_path_factory.getbasetemp() / "engine-cache")
    try:
        run = folder / "run"
        assert main(["run", str(write_spec(folder, steps=4, every=2)), "--run-dir", str(run), "--quiet"]) == 0
    finally:
        if old is None:
            os.environ.pop("ENGINE_CACHE_DIR", None)
        else:
            os.environ["ENGINE_CACHE_DIR"] = old
    return run


@pytest.fixture
def tiny_run_copy(finished_tiny_run, tmp_path) -> Path:
    """A copy of `finished_tiny_run` of this test's own."""
    import shutil

    out = tmp_path / "run"
    shutil.copytree(finished_tiny_run, out)
    return out
