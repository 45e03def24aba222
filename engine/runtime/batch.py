"""Packing prompts and responses into the padded tensors the trainer consumes."""

from __future__ import annotations

import torch


def pack(prompts: list[list[int]], responses: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Pad a batch of (prompt, response) token lists into trainer tensors.

    Prompts are left-padded to the longest prompt P and responses right-padded to the longest
    response T, so every response starts at column P. Returns ``input_ids`` / ``attention_mask`` /
    ``position_ids`` [B, P+T] and ``responses`` / ``response_mask`` [B, T] (mask float32).
    """
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    b = len(prompts)
    p = max(len(x) for x in prompts)
    t = max(1, max(len(x) for x in responses))
    ids = torch.full((b, p + t), pad_id, dtype=torch.long)
    attn = torch.zeros((b, p + t), dtype=torch.long)
    for i, (pr, rs) in enumerate(zip(prompts, responses)):
        ids[i, p - len(pr):p] = torch.tensor(pr, dtype=torch.long)
        attn[i, p - len(pr):p] = 1
        if rs:
            ids[i, p:p + len(rs)] = torch.tensor(rs, dtype=torch.long)
            attn[i, p:p + len(rs)] = 1
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    return {
        "input_ids": ids,
        "attention_mask": attn,
        "position_ids": pos,
        "responses": ids[:, p:].clone(),
        "response_mask": attn[:, p:].float(),
    }


def pack_groups(prompts: list[list[int]], responses: list[list[int]], group_size: int,
                pad_id: int) -> dict[str, torch.Tensor]:
    """`pack` for ``group_size`` responses per prompt (prompt-major), plus the per-prompt layout.

    Adds ``prompt_ids`` / ``prompt_mask`` [G, P] (left-padded, one row per prompt) so the trainer
    can run each prompt once for its whole group (see `response_logits`).
    """
    if len(responses) != len(prompts) * group_size:
        raise ValueError(f"{len(responses)} responses for {len(prompts)} prompts x {group_size}")
    out = pack([p for p in prompts for _ in range(group_size)], responses, pad_id)
    p = max(len(x) for x in prompts)
    ids = torch.full((len(prompts), p), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), p), dtype=torch.long)
    for i, pr in enumerate(prompts):
        ids[i, p - len(pr):] = torch.tensor(pr, dtype=torch.long)
        mask[i, p - len(pr):] = 1
    out["prompt_ids"], out["prompt_mask"] = ids, mask
    return out
