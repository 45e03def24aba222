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
