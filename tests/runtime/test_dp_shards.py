"""Data-parallel sharding: the ranks together hold each single-process mini-batch, in order."""

import torch

from engine.runtime.batch import dp_shards, merge_dp, pack_groups


def test_each_rank_gets_its_slice_of_every_mini_batch_and_merge_restores_the_order():
    prompts = [[1, 2], [3], [4, 5, 6], [7]]
    responses = [[10 + i] * (1 + i % 3) for i in range(8)]  # 4 prompts x n=2
    batch = pack_groups(prompts, responses, 2, pad_id=0)
    batch["advantages"] = torch.arange(8.0)[:, None].expand(-1, batch["responses"].shape[1]).contiguous()
    shards = dp_shards(batch, dp=2, mini_batch=4)
    # mini-batches are rows 0-3 and 4-7: rank 0 holds rows 0,1 and 4,5; rank 1 rows 2,3 and 6,7
    assert shards[0]["advantages"][:, 0].tolist() == [0, 1, 4, 5]
    assert shards[1]["advantages"][:, 0].tolist() == [2, 3, 6, 7]
    # whole groups of n=2 per slice: each rank keeps its prompts' one-row-per-prompt tensors
    assert shards[0]["prompt_ids"].tolist() == batch["prompt_ids"][[0, 2]].tolist()
    assert shards[1]["prompt_ids"].tolist() == batch["prompt_ids"][[1, 3]].tolist()
    assert all(v.is_contiguous() for s in shards for v in s.values())
    merged = merge_dp([s["advantages"] for s in shards], mini_batch=4)
    assert torch.equal(merged, batch["advantages"])


def test_slices_smaller_than_a_group_fall_back_to_the_flat_layout():
    batch = pack_groups([[1], [2]], [[5], [6], [7], [8]], 2, pad_id=0)
    shards = dp_shards(batch, dp=4, mini_batch=4)
    assert [s["responses"][:, 0].tolist() for s in shards] == [[5], [6], [7], [8]]
    assert all("prompt_ids" not in s for s in shards)
    assert dp_shards(batch, dp=1, mini_batch=4) == [batch]
