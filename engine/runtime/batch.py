"""Packing prompts and responses into the padded tensors the trainer consumes (the layout: `engine.core.batch`)."""

from __future__ import annotations

import torch

from engine.core.batch import GROUP_KEYS, Batch, left_pad, ragged, sequences_per_group  # noqa: F401  (re-exported)


def pack(prompts: list[list[int]], responses: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Pad a batch of (prompt, response) token lists into trainer tensors.

    Prompts are left-padded to the longest prompt P and responses right-padded to the longest
    response T, so every response starts at column P. Returns ``input_ids`` / ``attention_mask`` /
    ``position_ids`` [B, P+T] and ``responses`` / ``response_mask`` [B, T] (mask float32).
    """
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    return _pack(*left_pad(prompts, pad_id), responses, pad_id)


def _pack(prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, responses: list[list[int]],
          pad_id: int) -> dict[str, torch.Tensor]:
    """`pack` from already left-padded prompts [B, P]."""
    b, p = prompt_ids.shape
    t = max(1, max(len(x) for x in responses))
    resp, resp_mask = ragged(responses, t, pad_id, torch.long)
    ids = torch.cat([prompt_ids, resp], dim=1)
    attn = torch.cat([prompt_mask, resp_mask], dim=1)
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    return {
        "input_ids": ids,
        "attention_mask": attn,
        "position_ids": pos,
        "responses": resp,
        "response_mask": resp_mask.float(),
    }


def pack_groups(prompts: list[list[int]], responses: list[list[int]], group_size: int,
                pad_id: int) -> dict[str, torch.Tensor]:
    """`pack` for ``group_size`` responses per prompt (prompt-major), plus the per-prompt layout.

    Adds ``prompt_ids`` / ``prompt_mask`` [G, P] (left-padded, one row per prompt) so the trainer
    can run each prompt once for its whole group (see `response_logits`).
    """
    if len(responses) != len(prompts) * group_size:
        raise ValueError(f"{len(responses)} responses for {len(prompts)} prompts x {group_size}")
    ids, mask = left_pad(prompts, pad_id)
    out = _pack(ids.repeat_interleave(group_size, dim=0), mask.repeat_interleave(group_size, dim=0),
                responses, pad_id)
    out["prompt_ids"], out["prompt_mask"] = ids, mask
    return out


def dp_shards(batch: dict[str, torch.Tensor], dp: int, mini_batch: int) -> list[dict[str, torch.Tensor]]:
    """Split a batch over ``dp`` data-parallel ranks so that, mini-batch by mini-batch, the ranks
    together hold exactly the single-process mini-batch: rank d gets the d-th slice of every
    ``mini_batch``-sequence mini-batch (contiguous, so gloo never scatters strided views).

    Per-prompt tensors (`GROUP_KEYS`) follow their sequences when each slice is whole groups, and are
    dropped otherwise (the trainer then uses the flat layout). With ``dp == 1`` the batch is returned
    as it is."""
    if dp == 1:
        return [batch]
    rows = batch["responses"].shape[0]
    if mini_batch % dp or rows % mini_batch:
        raise ValueError(f"{rows} sequences in mini-batches of {mini_batch} do not split over DP {dp}")
    part = mini_batch // dp
    n = sequences_per_group(batch)
    keep_groups = bool(n) and part % n == 0
    out = []
    for d in range(dp):
        starts = range(d * part, rows, mini_batch)
        idx = torch.cat([torch.arange(m, m + part) for m in starts])
        # row blocks copied whole (a memcpy each), not gathered row by row
        shard = {k: torch.cat([v[m:m + part] for m in starts]) for k, v in batch.items()
                 if isinstance(v, torch.Tensor) and k not in GROUP_KEYS}
        if keep_groups:
            gidx = torch.unique_consecutive(idx // n)
            shard.update({k: batch[k][gidx].contiguous() for k in GROUP_KEYS if k in batch})
        out.append(shard)
    return out


def merge_dp(parts: list[torch.Tensor], mini_batch: int) -> torch.Tensor:
    """Inverse of `dp_shards` for per-sequence results (log-probs, values): rows back in batch order."""
    dp = len(parts)
    if dp == 1:
        return parts[0]
    part = mini_batch // dp
    rows = sum(p.shape[0] for p in parts)
    chunks = []
    for i, m in enumerate(range(0, rows, mini_batch)):
        chunks.extend(p[i * part:(i + 1) * part] for p in parts)
    return torch.cat(chunks)
