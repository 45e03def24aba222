"""The trainer batch's layout: the keys the runtime fills and the trainers read, and left-padding.

A batch is a dict of CPU tensors, one row per sequence (B = prompts x ``rollout.n``, prompt-major)
unless noted. `engine.runtime.batch` packs the token tensors; the loop adds the rest before the update.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypedDict

if TYPE_CHECKING:  # annotations only: importing this module does not import torch
    import torch


class Batch(TypedDict, total=False):
    """The keys of a trainer batch (P: longest prompt, T: longest response, G: prompts).

    Tokens (`engine.runtime.batch.pack_groups`): ``input_ids``, ``attention_mask`` (1 on real tokens),
    ``position_ids``: [B, P+T] long, prompts left-padded so every response starts at column P;
    ``responses`` [B, T] long and ``response_mask`` [B, T] float32 (1 on response tokens);
    ``prompt_ids`` / ``prompt_mask`` [G, P]: each prompt once for its whole group (`GROUP_KEYS`).

    Per response token, [B, T] float32, filled by the loop: ``rollout_log_probs`` (the generator's,
    nats), ``old_log_probs`` (the policy before the update), ``ref_log_probs`` (the reference policy),
    ``advantages``; with ``algorithm.advantage: gae`` also ``returns`` and ``old_values``.
    """

    input_ids: "torch.Tensor"
    attention_mask: "torch.Tensor"
    position_ids: "torch.Tensor"
    responses: "torch.Tensor"
    response_mask: "torch.Tensor"
    prompt_ids: "torch.Tensor"
    prompt_mask: "torch.Tensor"
    rollout_log_probs: "torch.Tensor"
    old_log_probs: "torch.Tensor"
    ref_log_probs: "torch.Tensor"
    advantages: "torch.Tensor"
    returns: "torch.Tensor"
    old_values: "torch.Tensor"


#: Tensors with one row per prompt (a group of n sequences) rather than one per sequence.
GROUP_KEYS = ("prompt_ids", "prompt_mask")


def ragged(rows: list[list], width: int, fill, dtype: "torch.dtype", left: bool = False) -> tuple["torch.Tensor", "torch.Tensor"]:
    """Lists of unequal length as one [B, width] tensor, padded with ``fill`` on the right (or the left),
    and the long mask of real entries; one copy of all values, no per-row tensor."""
    import torch

    lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
    cols = torch.arange(width)[None, :]
    mask = (cols >= width - lengths[:, None]) if left else (cols < lengths[:, None])
    out = torch.full((len(rows), width), fill, dtype=dtype)
    if int(lengths.sum()):
        out[mask] = torch.tensor([v for r in rows for v in r], dtype=dtype)
    return out, mask.long()


def left_pad(prompts: list[list[int]], pad_id: int) -> tuple["torch.Tensor", "torch.Tensor"]:
    """Left-pad token lists to the longest one: ``ids`` and ``mask`` (1 on real tokens), both [B, P] long."""
    import torch

    return ragged(prompts, max(len(x) for x in prompts), pad_id, torch.long, left=True)


def sequences_per_group(batch: "dict") -> int:
    """Sequences per prompt of a batch that carries per-prompt tensors (`GROUP_KEYS`): ``rows / groups``;
    0 when it carries none or the rows are not whole groups (then only the flat layout is valid)."""
    if "prompt_ids" not in batch:
        return 0
    rows, groups = batch["responses"].shape[0], batch["prompt_ids"].shape[0]
    return rows // groups if groups and rows % groups == 0 else 0


def split_rows(batch: "dict", size: int) -> list[dict]:
    """Consecutive chunks of at most ``size`` sequences of every tensor in ``batch`` (the mini- and
    micro-batches of both trainers).

    Per-prompt tensors (`GROUP_KEYS`, one row per group of n sequences) are cut along with their
    sequences when ``size`` is a multiple of n; otherwise they are dropped and the chunk falls back to
    the flat layout. Entries that are not tensors are dropped.
    """
    import torch

    rows = batch["responses"].shape[0]
    n = sequences_per_group(batch)
    keep_groups = bool(n) and size % n == 0
    out = []
    for i in range(0, rows, size):
        chunk = {k: v[i:i + size] for k, v in batch.items() if isinstance(v, torch.Tensor) and k not in GROUP_KEYS}
        if keep_groups:
            chunk.update({k: batch[k][i // n:(i + size) // n] for k in GROUP_KEYS})
        out.append(chunk)
    return out
