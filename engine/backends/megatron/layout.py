"""The input layout of the Megatron trainer: left-aligned rows, causal attention only, padded widths.

The runtime packs a batch with left-padded prompts and right-padded responses (`engine.runtime.batch`):
every response starts at one column, and the HF trainer masks the padding keys with an explicit mask.
Transformer Engine's self-attention is ``AttnMaskType.causal``: it ignores a padding mask, so with
that layout every real token would attend to the prompt padding on its left. This module re-forms
each micro-batch so that no mask is needed:

* every row holds its real tokens (prompt, then response) from column 0, padding after them, so a
  real token's causal window holds real tokens only; position ids are 0, 1, 2, ... (what vLLM and HF
  use for those tokens);
* the width is the longest real row of the call, rounded up to `seq_multiple` (TP under sequence
  parallelism, which scatters the sequence over the TP ranks; 16 x TP, or 128 x TP blockwise, under
  FP8, whose GEMMs need every rank's token count divisible by 16 / 128);
* ``logit_index[i, j]`` is the column whose logits predict response token j of row i.

`micro_batches` is the one place the trainer's micro-batch shapes are formed; it asserts the
multiple. Pure tensor functions, no megatron import.
"""

from __future__ import annotations

from typing import Mapping

import torch

from compiler.memory import token_multiple

#: Per-row keys the layout re-forms; every other [B, ...] tensor of the batch is kept as it is.
_RESHAPED = ("input_ids", "attention_mask", "position_ids")


def seq_multiple(tensor_parallel: int, sequence_parallel: bool, fp8: str = "none") -> int:
    """The multiple (tokens) every micro-batch's sequence length must be (`compiler.memory.token_multiple`,
    which the plan's notes quote). Sequence parallelism splits the sequence over ``tensor_parallel``
    ranks (megatron-core asserts divisibility in ``scatter_to_sequence_parallel_region``). FP8 GEMMs
    (Transformer Engine) need the token count of each rank divisible by 16 (per-tensor recipes) or 128
    (blockwise); with sequence parallelism a rank holds s/TP tokens of each sequence, hence 16 x TP."""
    return token_multiple(tensor_parallel, sequence_parallel, fp8)


def ceil_to(x: int, multiple: int) -> int:
    return -(-x // multiple) * multiple


def left_align(batch: Mapping[str, torch.Tensor], width: int) -> dict[str, torch.Tensor]:
    """``batch`` (runtime layout: ``input_ids`` / ``attention_mask`` [B, P+T], ``responses`` [B, T])
    with every row's real tokens moved to columns 0.. in order, ``width`` columns (>= the longest
    real row), no attention mask, position ids 0..width-1, and ``logit_index`` [B, T] (long): the
    column of the logits that predict each response token (clamped into range on padding)."""
    ids, attn = batch["input_ids"], batch["attention_mask"].long()
    b, s = ids.shape
    t = batch["responses"].shape[1]
    lengths = attn.sum(-1)
    if lengths.numel() and int(lengths.max()) > width:
        raise ValueError(f"a row holds {int(lengths.max())} real tokens, more than the width {width}")
    # a stable sort of the columns by "is padding" keeps the real tokens' order and puts them first
    order = torch.sort((attn == 0).to(torch.int8), dim=1, stable=True).indices
    aligned = ids.gather(1, order)
    if width <= s:
        aligned = aligned[:, :width]
    else:
        aligned = torch.cat([aligned, aligned.new_zeros(b, width - s)], dim=1)
    prompt_len = attn[:, :s - t].sum(-1)
    index = (prompt_len[:, None] - 1 + torch.arange(t, device=ids.device)[None, :]).clamp(0, width - 1)
    out = {k: v for k, v in batch.items() if k not in _RESHAPED}
    out["input_ids"] = aligned.contiguous()
    out["position_ids"] = torch.arange(width, device=ids.device).expand(b, width).contiguous()
    out["logit_index"] = index
    return out


def micro_batches(batch: Mapping[str, torch.Tensor], size: int, multiple: int) -> list[dict[str, torch.Tensor]]:
    """``batch`` cut into micro-batches of ``size`` rows, each `left_align`-ed to one width: the
    longest real row of the whole batch rounded up to ``multiple`` (one shape for every micro-batch
    of a forward-backward call, as pipeline parallelism wants). Asserts the multiple."""
    lengths = batch["attention_mask"].long().sum(-1)
    width = ceil_to(max(1, int(lengths.max()) if lengths.numel() else 1), multiple)
    n = batch["responses"].shape[0]
    out = []
    for i in range(0, n, size):
        mb = left_align({k: v[i:i + size] for k, v in batch.items()}, width)
        assert mb["input_ids"].shape[1] % multiple == 0, (mb["input_ids"].shape, multiple)
        out.append(mb)
    return out

