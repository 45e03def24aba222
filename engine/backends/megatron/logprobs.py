"""Token log-probs and entropy from vocab-parallel logits, without gathering the vocabulary.

Each tensor-parallel rank holds logits for a contiguous slice [start, start + V/tp) of the (padded)
vocabulary. With ``z = logits / temperature`` and padded ids (>= the real vocabulary) masked out:

    lse     = M + log(sum_r sum_v exp(z_v - M)),         M = max over all ranks (all-reduce MAX)
    log p_y = z_y - lse                                   (z_y from the rank that owns y; all-reduce SUM)
    H       = lse - sum_r sum_v p_v z_v                   (all-reduce SUM)

Three all-reduces of [B, T] tensors instead of an all-gather of [B, T, V]. The sums use Megatron's
`reduce_from_tensor_model_parallel_region` (all-reduce forward, identity backward): every TP rank
computes the same replicated loss, so each rank's gradient to its own slice is already complete.
The max is a constant shift and carries no gradient. The one replicated value that feeds per-rank
terms summed later (lse inside p = exp(z - lse) of the entropy) goes through
`copy_to_tensor_model_parallel_region` (identity forward, all-reduce backward), so its gradient
collects every rank's share.
"""

from __future__ import annotations

from typing import Optional

import torch


def _tp_sum(x: torch.Tensor, group) -> torch.Tensor:
    if group is None or torch.distributed.get_world_size(group) == 1:
        return x
    from megatron.core.tensor_parallel.mappings import reduce_from_tensor_model_parallel_region

    return reduce_from_tensor_model_parallel_region(x, group=group)


def _tp_copy(x: torch.Tensor, group) -> torch.Tensor:
    """Identity forward, all-reduce backward: a replicated value used in per-rank terms that are
    summed afterwards gets the gradient of every rank's terms."""
    if group is None or torch.distributed.get_world_size(group) == 1:
        return x
    from megatron.core.tensor_parallel.mappings import copy_to_tensor_model_parallel_region

    return copy_to_tensor_model_parallel_region(x, group=group)


def _tp_max(x: torch.Tensor, group) -> torch.Tensor:
    if group is not None and torch.distributed.get_world_size(group) > 1:
        torch.distributed.all_reduce(x, op=torch.distributed.ReduceOp.MAX, group=group)
    return x


def vocab_parallel_log_probs(logits: torch.Tensor, tokens: torch.Tensor, vocab_start: int, vocab_size: int,
                             temperature: float = 1.0, with_entropy: bool = False, group=None
                             ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """log p(token) (nats) and optionally the entropy (nats), both [B, T], from this rank's logit slice.

    logits: [B, T, V_local] (any float dtype; computed in float32). tokens: [B, T] global ids.
    vocab_start: first global id of this slice. vocab_size: the real vocabulary (ids at or beyond it
    are padding and get probability 0). group: the tensor-parallel process group (None: no TP).
    Differentiable in ``logits``.
    """
    z = logits.float()
    if temperature != 1.0:
        z = z / temperature
    v_local = z.shape[-1]
    ids = torch.arange(vocab_start, vocab_start + v_local, device=z.device)
    pad = ids >= vocab_size
    has_pad = bool(pad.any())
    finite = z.masked_fill(pad, 0.0) if has_pad else z  # for p * z: 0 * -inf would be NaN (and its grad)
    if has_pad:
        z = z.masked_fill(pad, float("-inf"))
    with torch.no_grad():
        m = z.max(dim=-1).values
        m = _tp_max(m.clone(), group)
        m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    shifted = z - m[..., None]
    e = shifted.exp()
    lse = m + _tp_sum(e.sum(-1), group).log()
    local = tokens - vocab_start
    mine = (local >= 0) & (local < v_local)
    picked = z.gather(-1, local.clamp(0, v_local - 1)[..., None]).squeeze(-1)
    picked = torch.where(mine, picked, torch.zeros_like(picked))
    logp = _tp_sum(picked, group) - lse
    if not with_entropy:
        return logp, None
    p = (z - _tp_copy(lse, group)[..., None]).exp()
    pz = p * finite
    entropy = lse - _tp_sum(pz.sum(-1), group)
    return logp, entropy
