"""What each rank runs in the Megatron tests (spawned processes import this module).

Everything is real: megatron-core over gloo, mbridge, transformers models saved to local folders.
Results come back to the parent (pytest) process as plain tensors and numbers.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from schemas import Architecture

QWEN2 = Architecture(family="qwen2", hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                     ffn_hidden_size=96, vocab_size=126, tied_embeddings=True, max_position_embeddings=128,
                     qkv_bias=True, rope_theta=10000.0)
#: Llama family with an explicit head_dim (24) unequal to hidden / heads (16), untied head.
LLAMA_HD = Architecture(family="llama", hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=24,
                        ffn_hidden_size=96, vocab_size=126, tied_embeddings=False, max_position_embeddings=128,
                        qkv_bias=False, rope_theta=10000.0)
ARCHS = {"qwen2": QWEN2, "llama_hd": LLAMA_HD}


def save_hf_model(arch: Architecture, path: str, seed: int = 0) -> None:
    """A random-init HF model of ``arch`` (init std 0.1, so logits are far from uniform) at ``path``."""
    from transformers import AutoModelForCausalLM

    from engine.modeling import hf_config

    cfg = hf_config(arch)
    cfg.initializer_range = 0.1
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    model.save_pretrained(path)


def make_batch(arch: Architecture, seed: int = 0, groups: int = 4, n: int = 2) -> dict[str, torch.Tensor]:
    """A `pack_groups` batch (left-padded prompts of 2-6 tokens, responses of 1-5 tokens) with
    advantages; deterministic in ``seed``."""
    from engine.runtime.batch import pack_groups

    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(1, arch.vocab_size, (int(torch.randint(2, 7, (1,), generator=g)),), generator=g).tolist()
               for _ in range(groups)]
    responses = [torch.randint(1, arch.vocab_size, (int(torch.randint(1, 6, (1,), generator=g)),), generator=g).tolist()
                 for _ in range(groups * n)]
    b = pack_groups(prompts, responses, n, pad_id=0)
    b["advantages"] = torch.randn(groups * n, 1, generator=g) * b["response_mask"]
    return b


def _sizes(batch_rows: int, micro: int):
    from engine.backends.config import BatchConfig

    return BatchConfig(mini_batch=batch_rows, micro_batch=micro, log_prob_micro_batch=3)


def optim_loss(agg: str = "token_mean", temperature: float = 1.0):
    """The optimizer and loss settings both trainers use in the update checks (responses of up to 5
    tokens: max_response_length 5 for seq_mean_token_sum_norm; loss micro-batches of 2 sequences)."""
    from engine.backends.config import LossConfig, OptimConfig

    return (OptimConfig(lr=1e-3, weight_decay=0.01, grad_clip=1.0),
            LossConfig(clip_low=0.2, clip_high=0.28, loss_agg=agg, kl_coef=0.1, entropy_coef=0.01,
                       temperature=temperature, max_response_length=5, loss_micro_batch=2))


def trainer(arch: Architecture, path: str, tp: int, pp: int, dp: int, rows: int, micro: int = 2,
            agg: str = "token_mean", temperature: float = 1.0):
    from engine.backends.megatron.model import ModelLayout
    from engine.backends.megatron.trainer import MegatronTrainer

    optim, loss = optim_loss(agg, temperature)
    return MegatronTrainer(arch, path, ModelLayout(tensor_parallel=tp, pipeline_parallel=pp, recompute="full"),
                           optim, loss, _sizes(rows, micro), data_parallel=dp, seed=1)


def full_logits(tr, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The trainer model's logits [B, S, V] (TP slices gathered, padded vocabulary cut), every rank."""
    from megatron.core import parallel_state as ps

    from engine.backends.megatron.cpu import compat_for
    from engine.backends.megatron.trainer import _flat

    with compat_for("cpu"), torch.no_grad():
        tr.model.eval()
        flat = _flat(batch, tr.device)

        def loss_fn(mb, logits):
            if tr.layout.tensor_parallel > 1:
                parts = [torch.empty_like(logits) for _ in range(tr.layout.tensor_parallel)]
                torch.distributed.all_gather(parts, logits.contiguous(), group=ps.get_tensor_model_parallel_group())
                logits = torch.cat(parts, dim=-1)
            return torch.zeros(()), {"logits": logits[..., :tr.arch.vocab_size]}

        micro = tr._micro_batches(flat, 3)  # the trainer's left-aligned layout
        outs = tr._run(micro, loss_fn, forward_only=True)
        b, s = flat["input_ids"].shape
        aligned = torch.empty(b, micro[0]["input_ids"].shape[1], tr.arch.vocab_size)
        if ps.is_pipeline_last_stage():
            aligned.copy_(torch.cat([o["logits"] for o in outs]))
        aligned = tr._broadcast_from_last_stage(aligned)
        return to_runtime_layout(aligned, flat["attention_mask"])


def to_runtime_layout(aligned: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Per-token values [B, W, ...] of the left-aligned layout back at the runtime layout's columns
    [B, S, ...] (zeros at padding)."""
    real = attention_mask.bool()
    out = aligned.new_zeros(real.shape + aligned.shape[2:])
    for i in range(real.shape[0]):
        out[i, real[i]] = aligned[i, :int(real[i].sum())]
    return out


def _dp_shard(batch: dict[str, torch.Tensor], dp: int, dp_rank: int) -> dict[str, torch.Tensor]:
    rows = batch["responses"].shape[0] // dp
    return {k: v[dp_rank * rows:(dp_rank + 1) * rows] for k, v in batch.items()
            if k not in ("prompt_ids", "prompt_mask")}


def run_all(rank: int, world: int, root: str, layouts: list[tuple[str, int, int]], update_layouts: list[tuple[int, int, str]],
            inputs: dict[str, Any]) -> dict[str, Any]:
    """Every multi-rank check in one process pair (megatron's import dominates the cost).

    layouts: (model, tp, pp) for the forward/export checks; update_layouts: (tp, pp, loss_agg) for
    the RL update (qwen2; the remaining factor of 2 is data parallel), the first one also checkpointing."""
    from engine.backends.manifest import check_manifest
    from engine.backends.megatron.logprobs import vocab_parallel_log_probs
    from megatron.core import parallel_state as ps
    from safetensors.torch import load_file

    out: dict[str, Any] = {}
    batch = inputs["batch"]
    for name, tp, pp in layouts:
        arch, path = ARCHS[name], os.path.join(root, name)
        tr = trainer(arch, path, tp, pp, world // (tp * pp), batch["responses"].shape[0])
        key = f"{name}_tp{tp}_pp{pp}"
        out[f"logits_{key}"] = full_logits(tr, batch)
        logp, ent = tr.compute_log_probs(batch, with_entropy=True)
        out[f"logp_{key}"], out[f"entropy_{key}"] = logp, ent
        hf = load_file(os.path.join(path, "model.safetensors"))
        streamed = [(n, t.clone()) for bucket in tr.weight_stream(bucket_bytes=64 * 1024) for n, t in bucket]
        check_manifest(tr.weight_names(), [n for n, _ in streamed])
        out[f"roundtrip_{key}"] = {n: bool(torch.equal(t, hf[n])) for n, t in streamed}
        out[f"stream_names_{key}"] = sorted(n for n, _ in streamed)
        out[f"hf_names_{key}"] = sorted(hf)
        if tp == 1 and pp == 1:
            from engine.backends.megatron.bridge import hand_mapping

            mine = tr.model.module.state_dict()
            oracle = hand_mapping(hf, arch)
            out[f"hand_mapping_{key}"] = {k: bool(torch.equal(mine[k], v)) for k, v in oracle.items()}
            out[f"megatron_names_{key}"] = sorted(k for k in mine if "_extra_state" not in k)
        if tp == 2:  # collective: every rank iterates the export, rank 0 writes
            tr.export_hf(os.path.join(root, f"export_{key}"))
        torch.distributed.barrier()

    # vocab-parallel log-probs and entropy vs the full vocabulary: random logits over a padded
    # vocabulary of 10 real + 2 padding ids, split in two, temperature 0.7, gradients included
    if world == 2:
        z = inputs["vp_logits"].clone().requires_grad_(True)
        tp_group = torch.distributed.new_group([0, 1])
        half = z.shape[-1] // 2
        mine = z[..., rank * half:(rank + 1) * half]
        lp, en = vocab_parallel_log_probs(mine, inputs["vp_tokens"], rank * half, 10, temperature=0.7,
                                          with_entropy=True, group=tp_group)
        (lp.sum() + 0.5 * en.sum()).backward()
        out["vp"] = {"logp": lp.detach(), "entropy": en.detach(), "grad": z.grad[..., rank * half:(rank + 1) * half]}

    for i, (tp, pp, agg) in enumerate(update_layouts):
        dp = world // (tp * pp)
        rows = batch["responses"].shape[0]
        tr = trainer(QWEN2, os.path.join(root, "qwen2"), tp, pp, dp, rows // dp, agg=agg)
        shard = _dp_shard(inputs["update_batch"], dp, tr.dp_rank)
        key = f"tp{tp}_pp{pp}_dp{dp}_{agg}"
        m1 = tr.update(shard)
        w1 = {n: t.clone() for b in tr.weight_stream(1 << 20) for n, t in b}
        out[f"update_{key}"] = {"metrics": m1, "weights": w1}
        if i == 0:  # checkpoint after one update; a second update, reload, and the second again
            ckpt = os.path.join(root, f"ckpt_{key}")
            tr.save_checkpoint(ckpt)
            m2 = tr.update(shard)
            w2 = {n: t.clone() for b in tr.weight_stream(1 << 20) for n, t in b}
            tr.load_checkpoint(ckpt)
            m2b = tr.update(shard)
            w2b = {n: t.clone() for b in tr.weight_stream(1 << 20) for n, t in b}
            out[f"resume_{key}"] = {"m2": m2, "m2b": m2b, "files": sorted(os.listdir(ckpt)),
                                    "same_weights": all(torch.equal(w2[n], w2b[n]) for n in w2)}
    ps.destroy_model_parallel()
    return out


def run_objective(rank: int, world: int, root: str, layouts: list[tuple[int, int, str, bool]],
                  inputs: dict[str, Any]) -> dict[str, Any]:
    """RL updates at ``inputs['temperature']`` (qwen2), one per layout (tp, pp, loss_agg, on_policy; the
    remaining factor of 2 is data parallel): metrics and weights after the update, and the log-probs
    and entropy before it. ``on_policy``: the batch without old log-probs, with the generator's."""
    from megatron.core import parallel_state as ps

    out: dict[str, Any] = {}
    temperature = inputs["temperature"]
    for tp, pp, agg, on_policy in layouts:
        dp = world // (tp * pp)
        ub = dict(inputs["update_batch"])
        if on_policy:
            ub.pop("old_log_probs")
        rows = ub["responses"].shape[0]
        tr = trainer(QWEN2, os.path.join(root, "qwen2"), tp, pp, dp, rows // dp, agg=agg, temperature=temperature)
        key = f"tp{tp}_pp{pp}_dp{dp}_{agg}" + ("_on" if on_policy else "")
        logp, ent = tr.compute_log_probs(ub, with_entropy=True)
        m1 = tr.update(_dp_shard(ub, dp, tr.dp_rank))
        w1 = {n: t.clone() for b in tr.weight_stream(1 << 20) for n, t in b}
        out[key] = {"metrics": m1, "weights": w1, "logp": logp, "entropy": ent}
        tr.close()
    if ps.model_parallel_is_initialized():
        ps.destroy_model_parallel()
    return out
