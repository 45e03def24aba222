"""Token log-probs and entropy from vocab-parallel logits: no vocabulary gather, chunked over tokens.

Each tensor-parallel rank holds logits for a contiguous slice [start, start + V/tp) of the (padded)
vocabulary. With ``z = logits / temperature`` and padded ids (>= the real vocabulary) masked out,
per token (M = max over every rank, all-reduce MAX; S, W and z_y all-reduce SUM):

    S = sum_r sum_v exp(z_v - M)        W = sum_r sum_v exp(z_v - M) (z_v - M)
    log p_y = (z_y - M) - log S          H = log S - W / S          (lse = M + log S)

Memory: the pass works on ``chunk`` response tokens at a time (`compiler.memory.logprob_chunk_tokens`):
the logits of those tokens are gathered, upcast to fp32 and transformed in place, so beyond the
logits themselves only a few chunk-sized fp32 buffers live at once. The backward is written out
(`_VocabParallelLogProbs`): nothing but the logits and two [B, T] statistics is saved, and the
gradient is formed chunk by chunk into one buffer of the logits' shape and dtype:

    d log p_y / d z_v = [v = y] - p_v          d H / d z_v = -p_v (log p_v + H)

Every TP rank computes the same replicated loss, so the gradient each rank writes into its own slice
is already complete (no collective in the backward).
"""

from __future__ import annotations

from typing import Optional

import torch

from compiler.memory import logprob_chunk_tokens as chunk_tokens  # the compiler counts the same chunk


def _world(group) -> int:
    return 1 if group is None else torch.distributed.get_world_size(group)


def _all_reduce(x: torch.Tensor, group, op=None) -> torch.Tensor:
    if _world(group) > 1:
        torch.distributed.all_reduce(x, op=op or torch.distributed.ReduceOp.SUM, group=group)
    return x


def _pad_from(vocab_start: int, vocab_size: int, v_local: int) -> int:
    """First local column holding a padding id (>= vocab_size); v_local when the slice has none.
    Megatron pads the vocabulary at its end, so the padding of a slice is one contiguous tail."""
    return max(0, min(v_local, vocab_size - vocab_start))


def _chunk(logits: torch.Tensor, index: Optional[torch.Tensor], c0: int, c1: int) -> torch.Tensor:
    """fp32 copy of the logits predicting response tokens c0..c1-1: [B, c, V_local]."""
    if index is None:
        return logits[:, c0:c1].to(torch.float32, copy=True)
    rows = torch.arange(logits.shape[0], device=logits.device)[:, None]
    return logits[rows, index[:, c0:c1]].float()  # advanced indexing: already a copy


class _VocabParallelLogProbs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, index, tokens, vocab_start, vocab_size, temperature, group, chunk, with_entropy):
        b, t = tokens.shape
        v_local = logits.shape[-1]
        pad = _pad_from(vocab_start, vocab_size, v_local)  # local columns pad.. are padding ids
        logp = torch.empty(b, t, dtype=torch.float32, device=logits.device)
        lse = torch.empty_like(logp)
        ent = torch.empty_like(logp) if with_entropy else None
        for c0 in range(0, t, chunk):
            c1 = min(t, c0 + chunk)
            z = _chunk(logits, index, c0, c1)
            if temperature != 1.0:
                z.div_(temperature)
            if pad < v_local:
                z[..., pad:] = float("-inf")
            m = z.max(dim=-1).values
            _all_reduce(m, group, torch.distributed.ReduceOp.MAX)
            m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
            z.sub_(m[..., None])  # z - M, in place
            local = tokens[:, c0:c1] - vocab_start
            mine = (local >= 0) & (local < v_local)
            picked = z.gather(-1, local.clamp(0, v_local - 1)[..., None]).squeeze(-1)
            picked = torch.where(mine, picked, torch.zeros_like(picked))
            e = z.exp()
            sums = [e.sum(-1), picked]
            if with_entropy:
                if pad < v_local:
                    z[..., pad:] = 0.0  # exp(-inf) * -inf would be NaN
                sums.append(e.mul_(z).sum(-1))
            del e, z
            s = _all_reduce(torch.stack(sums), group)
            log_s = s[0].log()
            logp[:, c0:c1] = s[1] - log_s
            lse[:, c0:c1] = m + log_s
            if with_entropy:
                ent[:, c0:c1] = log_s - s[2] / s[0]
        ctx.save_for_backward(logits, index, tokens, lse, ent if with_entropy else lse)
        ctx.args = (vocab_start, vocab_size, temperature, chunk, with_entropy)
        if with_entropy:
            return logp, ent
        return logp, torch.zeros_like(logp)

    @staticmethod
    def backward(ctx, g_logp, g_ent):
        logits, index, tokens, lse, ent = ctx.saved_tensors
        vocab_start, vocab_size, temperature, chunk, with_entropy = ctx.args
        b, t = tokens.shape
        v_local = logits.shape[-1]
        pad = _pad_from(vocab_start, vocab_size, v_local)
        grad = torch.zeros_like(logits)
        rows = torch.arange(b, device=logits.device)[:, None]
        for c0 in range(0, t, chunk):
            c1 = min(t, c0 + chunk)
            lp = _chunk(logits, index, c0, c1)
            if temperature != 1.0:
                lp.div_(temperature)
            lp.sub_(lse[:, c0:c1, None])  # log p_v
            if pad < v_local:
                lp[..., pad:] = float("-inf")
            p = lp.exp()
            gl = g_logp[:, c0:c1, None].float()
            if with_entropy:
                if pad < v_local:
                    lp[..., pad:] = 0.0
                # dz = -p (g_logp + g_ent (log p + H)) + g_logp [v = y]
                coef = lp.add_(ent[:, c0:c1, None]).mul_(g_ent[:, c0:c1, None].float()).add_(gl)
            else:
                coef = gl
            dz = p.mul_(coef).neg_()
            del lp, coef
            local = tokens[:, c0:c1] - vocab_start
            mine = (local >= 0) & (local < v_local)
            dz.scatter_add_(-1, local.clamp(0, v_local - 1)[..., None],
                            torch.where(mine, g_logp[:, c0:c1].float(), torch.zeros_like(lse[:, c0:c1]))[..., None])
            if temperature != 1.0:
                dz.div_(temperature)
            if index is None:
                grad[:, c0:c1] += dz.to(grad.dtype)
            else:
                grad.index_put_((rows, index[:, c0:c1]), dz.to(grad.dtype), accumulate=True)
        return grad, None, None, None, None, None, None, None, None


def vocab_parallel_log_probs(logits: torch.Tensor, tokens: torch.Tensor, vocab_start: int, vocab_size: int,
                             temperature: float = 1.0, with_entropy: bool = False, group=None,
                             index: Optional[torch.Tensor] = None, chunk: Optional[int] = None,
                             ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """log p(token) (nats) and optionally the entropy (nats), both [B, T] fp32, from this rank's logit slice.

    logits: [B, T, V_local], or [B, S, V_local] with ``index`` [B, T] (long) naming the column that
    predicts each token (the trainer's left-aligned layout, `layout.left_align`); any float dtype,
    computed in fp32 chunk by chunk. tokens: [B, T] global ids. vocab_start: first global id of this
    slice. vocab_size: the real vocabulary (ids at or beyond it are padding, probability 0). group:
    the tensor-parallel process group (None: no TP). chunk: response tokens per chunk (default
    `chunk_tokens`). Differentiable in ``logits``.
    """
    if chunk is None:
        chunk = chunk_tokens(tokens.shape[0], logits.shape[-1])
    if _world(group) == 1:
        group = None
    logp, ent = _VocabParallelLogProbs.apply(logits, index, tokens, vocab_start, vocab_size, float(temperature),
                                             group, int(chunk), bool(with_entropy))
    return logp, (ent if with_entropy else None)
