"""The Megatron trainer computes what HF (and vLLM) compute, under Transformer Engine's semantics and at
the shapes GPU plans produce: real megatron-core over gloo, HF transformers as the reference.

* TE's self-attention is causal-only (it ignores a padding mask). The trainer feeds no mask at all:
  rows are left-aligned (`engine.backends.megatron.layout`). On a variable-length, padded batch its
  log-probs equal HF's within 1e-5; the runtime's left-padded layout under the same causal-only
  attention does not (every real token then attends to the prompt padding).
* Sequence parallelism at TP 2 (the local spec with `SequenceParallelRMSNorm`) on rows of odd length:
  the width is padded to a multiple of 2, log-probs equal HF's, and one update equals TP 2 without SP;
  left odd, megatron-core's scatter refuses the micro-batch.
* llama3 and linear rope scaling, and a 4-token sliding window: Megatron logits equal HF's.
* The log-prob pass's and one training forward-backward's peak memory at a 152,064-entry vocabulary
  (torch profiler allocation records) are at or under `compiler.memory.logits_bytes`.
"""

from __future__ import annotations

import os
import sys

import pytest
import torch

pytest.importorskip("megatron.core")
pytest.importorskip("mbridge")

sys.path.insert(0, os.path.dirname(__file__))  # the helpers spawned ranks import by name
import layout_checks as lc  # noqa: E402
import mcore_checks as mc  # noqa: E402
from mcore_spawn import run_ranks  # noqa: E402

pytestmark = pytest.mark.slow


def _odd_batch():
    """A batch whose longest real row is odd (what SP at TP 2 cannot scatter unpadded)."""
    for seed in range(100):
        b = lc.make_batch(lc.QWEN2, seed=seed)
        if int(b["attention_mask"].sum(-1).max()) % 2:
            return b
    raise AssertionError("no odd batch")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("layout"))
    for name, arch in lc.ARCHS.items():
        mc.save_hf_model(arch, os.path.join(root, name))
    inputs = {name: lc.make_batch(arch, seed=i) for i, (name, arch) in enumerate(lc.ARCHS.items())}
    inputs["mistral_sw"] = lc.make_batch(lc.MISTRAL_SW, seed=7, prompt=(3, 9), response=(4, 9))  # rows > window
    inputs["big_vocab"] = lc.make_batch(lc.BIG_VOCAB, seed=3, rows=4, prompt=(8, 17), response=(16, 33))
    inputs["odd"] = _odd_batch()
    (single,) = run_ranks(lc.single, 1, root, inputs)
    tp2 = run_ranks(lc.tp2_sequence_parallel, 2, root, inputs)
    return {"root": root, "inputs": inputs, "single": single, "tp2": tp2}


def _hf(root, name, **config_overrides):
    from transformers import AutoConfig, AutoModelForCausalLM

    path = os.path.join(root, name)
    cfg = AutoConfig.from_pretrained(path)
    for k, v in config_overrides.items():
        setattr(cfg, k, v)
    return AutoModelForCausalLM.from_pretrained(path, config=cfg, dtype=torch.float32, local_files_only=True).eval()


def _hf_out(model, flat):
    from engine.algorithm.losses import entropy_from_logits
    from engine.backends.torch_trainer import response_logits, token_log_probs

    with torch.no_grad():
        full = model(input_ids=flat["input_ids"], attention_mask=flat["attention_mask"],
                     position_ids=flat["position_ids"]).logits
        logits = response_logits(model, flat)
    return full, token_log_probs(logits, flat["responses"]), entropy_from_logits(logits)


@pytest.mark.parametrize("name", ["qwen2", "llama3", "linear", "mistral_sw"])
def test_mask_free_layout_equals_hf(run, name):
    flat = run["inputs"][name]
    full, logp, ent = _hf_out(_hf(run["root"], name), flat)
    m, real = flat["response_mask"].bool(), flat["attention_mask"].bool()
    r = run["single"]
    assert (r[f"logp_{name}"] - logp)[m].abs().max() < 1e-5
    assert (r[f"entropy_{name}"] - ent)[m].abs().max() < 1e-5
    assert (r[f"logits_{name}"] - full)[real].abs().max() < 1e-5


def test_the_left_padded_layout_under_causal_only_attention_does_not(run):
    flat = run["inputs"]["qwen2"]
    _, logp, _ = _hf_out(_hf(run["root"], "qwen2"), flat)
    m = flat["response_mask"].bool()
    padded_rows = (flat["attention_mask"][:, 0] == 0)
    assert padded_rows.any() and not padded_rows.all()
    err = (run["single"]["old_layout_logp"] - logp).abs() * m
    assert err[padded_rows].max() > 1e-3  # rows with prompt padding: attention reached the pads
    assert err[~padded_rows].max() < 1e-5  # the longest prompt has no padding: same either way


@pytest.mark.parametrize("name,unscaled", [("llama3", {"rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}}),
                                           ("linear", {"rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}}),
                                           ("mistral_sw", {"sliding_window": None})])
def test_the_scaling_and_the_window_matter(run, name, unscaled):
    """Without the rope scaling (the window) HF's own logits move by far more than the tolerance, so
    the equality above fails if the Megatron build dropped them."""
    flat = run["inputs"][name]
    real = flat["attention_mask"].bool()
    with_it, _, _ = _hf_out(_hf(run["root"], name), flat)
    without, _, _ = _hf_out(_hf(run["root"], name, **unscaled), flat)
    assert (with_it - without)[real].abs().max() > 1e-2


def test_rope_inv_freq_hand_checked():
    from engine.backends.megatron.model import rope_inv_freq
    from schemas import RopeScaling

    base = rope_inv_freq(16, 10000.0)
    assert torch.allclose(base, torch.tensor([10000.0 ** (-k / 16) for k in range(0, 16, 2)]))
    s = RopeScaling(type="llama3", factor=8.0, original_max_position_embeddings=16, low_freq_factor=1.0,
                    high_freq_factor=4.0)
    got = rope_inv_freq(16, 10000.0, s)
    # pair 0: wavelength 2 pi = 6.28 between 16/4 and 16/1 -> smoothed with s = (16/6.28 - 1) / 3 = 0.5155
    smooth = (16 / (2 * torch.pi) - 1) / 3
    assert abs(float(got[0]) - ((1 - smooth) / 8 + smooth) * 1.0) < 1e-6
    # pairs 1..7: wavelength >= 19.9 > 16 -> divided by 8
    assert torch.allclose(got[1:], base[1:] / 8)
    assert torch.allclose(rope_inv_freq(16, 10000.0, RopeScaling(type="linear", factor=4.0)), base / 4)
    # Llama-3.1-8B (head dim 128, theta 5e5, original 8192): 35 of 64 pairs differ from unscaled RoPE
    from compiler.catalog import CATALOG

    a = CATALOG["llama3.1-8b"]
    diff = rope_inv_freq(a.kv_channels, a.rope_theta, a.rope_scaling) != rope_inv_freq(a.kv_channels, a.rope_theta)
    assert int(diff.sum()) == 35


def test_sequence_parallel_on_odd_lengths_pads_and_matches(run):
    flat = run["inputs"]["odd"]
    longest = int(flat["attention_mask"].sum(-1).max())
    assert longest % 2 == 1
    _, logp, ent = _hf_out(_hf(run["root"], "qwen2"), flat)
    m = flat["response_mask"].bool()
    for r in run["tp2"]:
        sp, plain = r["sp1"], r["sp0"]
        assert sp["widths"] == [longest + 1, longest + 1] and plain["widths"] == [longest, longest]
        assert (sp["logp"] - logp)[m].abs().max() < 1e-5
        assert (sp["entropy"] - ent)[m].abs().max() < 1e-5
        for k in ("trainer/pg_loss", "trainer/grad_norm", "trainer/entropy", "trainer/pg_clipfrac"):
            assert abs(sp["metrics"][k] - plain["metrics"][k]) <= 1e-5 * max(1.0, abs(plain["metrics"][k])), k
        worst = max((sp["weights"][n] - plain["weights"][n]).abs().max().item() for n in sp["weights"])
        assert worst < 1e-4, worst  # Adam's first step: rounding of near-zero gradients (see the parity test)
        assert "divisible by tensor parallel size" in r["unpadded"], r["unpadded"]


def test_log_prob_pass_peak_memory_at_152k_vocab_is_within_the_compiler_figure(run):
    from compiler import memory as M

    mem = run["single"]["memory"]
    w, b = mem["width"], mem["rows"]
    a = lc.BIG_VOCAB
    # the CPU trainer runs fp32 (4 B logits); one decoder layer's fp32 activations are the rest of the pass
    layer = 2 * M.layer_activation_bytes(a, w, b, 1, False)
    want_lp = M.logits_bytes(a, w, b, 1, grad=False, logit_bytes=4)
    want_train = M.logits_bytes(a, w, b, 1, grad=True, logit_bytes=4)
    print(f"\nV=152064 s={w} b={b}: log-prob pass {mem['peak_log_probs'] / 2**20:.1f} MiB measured, "
          f"{want_lp / 2**20:.1f} MiB modelled; training fwd+bwd {mem['peak_train'] / 2**20:.1f} MiB measured, "
          f"{want_train / 2**20:.1f} MiB modelled")
    assert mem["peak_log_probs"] <= want_lp + layer
    assert mem["peak_train"] <= want_train + 2 * layer
    # and the model is not loose (here the chunk term dominates: 4 rows x 27 tokens of 152,064 logits)
    assert mem["peak_log_probs"] >= 0.9 * want_lp and mem["peak_train"] >= 0.9 * want_train
