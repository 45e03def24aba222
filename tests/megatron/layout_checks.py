"""What each rank runs in test_megatron_layout.py (spawned processes import this module): the trainer's
left-aligned, mask-free layout; sequence parallelism on odd lengths; rope scaling; sliding windows;
the log-prob pass's peak memory at a 152,064-entry vocabulary. Real megatron-core over gloo."""

from __future__ import annotations

import os
from typing import Any

import torch

from schemas import Architecture, RopeScaling

_BASE = dict(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, ffn_hidden_size=96, vocab_size=126,
             max_position_embeddings=128, rope_theta=10000.0)
QWEN2 = Architecture(family="qwen2", tied_embeddings=True, qkv_bias=True, **_BASE)
#: llama3 scaling with a 16-token original context: at head dim 16 every frequency pair is changed
LLAMA3 = Architecture(family="llama", rope_scaling=RopeScaling(type="llama3", factor=8.0, original_max_position_embeddings=16,
                                                               low_freq_factor=1.0, high_freq_factor=4.0), **_BASE)
LINEAR = Architecture(family="llama", rope_scaling=RopeScaling(type="linear", factor=4.0), **_BASE)
#: a 4-token sliding window, shorter than most rows of the batch
MISTRAL_SW = Architecture(family="mistral", sliding_window=4, **_BASE)
#: the Qwen2.5-7B vocabulary (152,064 = 1188 x 128: no padding at TP 1) on a one-layer model
BIG_VOCAB = Architecture(family="qwen2", hidden_size=64, num_layers=1, num_heads=4, num_kv_heads=2, ffn_hidden_size=96,
                         vocab_size=152064, tied_embeddings=True, max_position_embeddings=256, qkv_bias=True,
                         rope_theta=10000.0)
ARCHS = {"qwen2": QWEN2, "llama3": LLAMA3, "linear": LINEAR, "mistral_sw": MISTRAL_SW, "big_vocab": BIG_VOCAB}


def make_batch(arch: Architecture, seed: int, rows: int = 6, prompt=(2, 9), response=(1, 9)) -> dict[str, torch.Tensor]:
    """A flat runtime-layout batch (left-padded prompts, right-padded responses) of varying lengths."""
    from engine.runtime.batch import pack_groups

    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(1, arch.vocab_size, (int(torch.randint(*prompt, (1,), generator=g)),), generator=g).tolist()
               for _ in range(rows)]
    responses = [torch.randint(1, arch.vocab_size, (int(torch.randint(*response, (1,), generator=g)),), generator=g).tolist()
                 for _ in range(rows)]
    b = pack_groups(prompts, responses, 1, pad_id=0)
    b["advantages"] = torch.randn(rows, 1, generator=g) * b["response_mask"]
    return {k: v for k, v in b.items() if k not in ("prompt_ids", "prompt_mask")}


def _trainer(arch, path, tp=1, sp=False, rows=6, micro=3, lp_micro=3):
    from engine.backends.config import BatchConfig
    from engine.backends.megatron.model import ModelLayout
    from engine.backends.megatron.trainer import MegatronTrainer

    from mcore_checks import optim_loss

    optim, loss = optim_loss()
    return MegatronTrainer(arch, path, ModelLayout(tensor_parallel=tp, sequence_parallel=sp), optim, loss,
                           BatchConfig(mini_batch=rows, micro_batch=micro, log_prob_micro_batch=lp_micro), seed=1)


def _old_layout_log_probs(tr, flat) -> torch.Tensor:
    """Response log-probs with the runtime's left-padded layout fed to the model as TE would see it
    (causal mask only, no padding mask): what the trainer computed before it left-aligned rows."""
    from megatron.core import parallel_state as ps

    from engine.backends.megatron.cpu import compat_for
    from engine.backends.megatron.logprobs import vocab_parallel_log_probs

    with compat_for("cpu"), torch.no_grad():
        tr.model.eval()
        logits = tr.model(flat["input_ids"], flat["position_ids"], None)
        t, s = flat["responses"].shape[1], flat["input_ids"].shape[1]
        lp, _ = vocab_parallel_log_probs(logits[:, s - t - 1:s - 1], flat["responses"], 0, tr.arch.vocab_size)
    assert ps.get_tensor_model_parallel_world_size() == 1
    return lp


def _profile_peak(fn) -> tuple[Any, int]:
    """(fn(), peak bytes of CPU tensor memory allocated while it ran, over what was live before):
    the torch profiler's allocation and free records in time order, summed."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    live = peak = 0
    for e in events:
        live += e.nbytes()
        peak = max(peak, live)
    return out, peak


def single(rank: int, world: int, root: str, inputs: dict[str, Any]) -> dict[str, Any]:
    """One rank, TP 1: the mask-free layout (and the old layout's failure), rope scaling, sliding window, memory."""
    from megatron.core import parallel_state as ps

    from engine.backends.megatron.cpu import compat_for
    from mcore_checks import full_logits

    out: dict[str, Any] = {}
    for name in ("qwen2", "llama3", "linear", "mistral_sw"):
        batch = inputs[name]
        tr = _trainer(ARCHS[name], os.path.join(root, name))
        out[f"logp_{name}"], out[f"entropy_{name}"] = tr.compute_log_probs(batch, with_entropy=True)
        out[f"logits_{name}"] = full_logits(tr, batch)
        if name == "qwen2":
            out["old_layout_logp"] = _old_layout_log_probs(tr, batch)
        tr.close()

    # peak memory of the log-prob pass and of one training forward-backward at V = 152,064
    batch = inputs["big_vocab"]
    rows = batch["responses"].shape[0]
    tr = _trainer(BIG_VOCAB, os.path.join(root, "big_vocab"), rows=rows, micro=rows, lp_micro=rows)
    tr.compute_log_probs(batch)  # warm-up: lazily built buffers (rotary tables, ...) are not the pass's
    (lp, ent), peak_lp = _profile_peak(lambda: tr.compute_log_probs(batch, with_entropy=True))
    batch = dict(batch, old_log_probs=lp + 0.1 * batch["response_mask"], ref_log_probs=lp - 0.1 * batch["response_mask"])
    from engine.algorithm.losses import loss_weights

    cfg = tr.loss_cfg  # what `update` adds to each mini-batch before its forward-backward
    batch["loss_weights"], batch["loss_counts"] = loss_weights(batch["response_mask"], cfg.loss_agg,
                                                               cfg.max_response_length, cfg.loss_micro_batch)
    micro = tr._micro_batches(batch, rows)
    with compat_for("cpu"):
        tr.model.train()
        tr.model.zero_grad_buffer()
        tr._run(micro, tr._loss, forward_only=False)  # warm-up
        tr.model.zero_grad_buffer()
        _, peak_train = _profile_peak(lambda: tr._run(micro, tr._loss, forward_only=False))
    out["memory"] = {"peak_log_probs": peak_lp, "peak_train": peak_train, "width": micro[0]["input_ids"].shape[1],
                     "rows": rows}
    tr.close()
    ps.destroy_model_parallel() if ps.model_parallel_is_initialized() else None
    return out


def tp2_sequence_parallel(rank: int, world: int, root: str, inputs: dict[str, Any]) -> dict[str, Any]:
    """Two ranks, TP 2 with sequence parallelism (the local spec, `SequenceParallelRMSNorm`) on a batch
    whose rows have odd lengths: log-probs and logits, one update against TP 2 without SP, and what
    megatron-core says when the width is left odd."""
    from megatron.core import parallel_state as ps

    from engine.backends.megatron.cpu import compat_for
    from engine.backends.megatron.layout import micro_batches
    from mcore_checks import full_logits

    out: dict[str, Any] = {}
    batch = inputs["odd"]
    path = os.path.join(root, "qwen2")
    for sp in (True, False):
        tr = _trainer(QWEN2, path, tp=2, sp=sp)
        assert tr.seq_multiple == (2 if sp else 1)
        widths = [mb["input_ids"].shape[1] for mb in tr._micro_batches(batch, 3)]
        logp, ent = tr.compute_log_probs(batch, with_entropy=True)
        logits = full_logits(tr, batch)
        ub = dict(batch, old_log_probs=logp + 0.05 * batch["response_mask"],
                  ref_log_probs=logp - 0.05 * batch["response_mask"])
        metrics = tr.update(ub)
        weights = {n: t.clone() for b in tr.weight_stream(1 << 20) for n, t in b}
        out[f"sp{int(sp)}"] = {"logp": logp, "entropy": ent, "logits": logits, "metrics": metrics,
                               "weights": weights, "widths": widths}
        if sp:  # the same micro-batches without the padding: megatron-core's SP scatter refuses them
            odd = micro_batches(batch, 3, 1)
            try:
                with compat_for("cpu"), torch.no_grad():
                    tr.model.eval()
                    tr._run(odd, lambda mb, logits: (torch.zeros(()), {}), forward_only=True)
                out["unpadded"] = "ran"
            except AssertionError as e:
                out["unpadded"] = f"AssertionError: {e}"
        tr.close()
    if ps.model_parallel_is_initialized():
        ps.destroy_model_parallel()
    return out
