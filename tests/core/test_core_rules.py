"""The rules `engine.core` (and `engine.backends.config`) hold once for every backend, on hand-worked cases."""

import torch

from engine.backends.config import OptimConfig
from engine.core.batch import GROUP_KEYS, left_pad, sequences_per_group, split_rows
from engine.core.generation import stop_window, stops_at
from engine.runtime.batch import pack_groups


def test_linear_warm_up_then_constant():
    # warm-up over 4 steps: 1/4, 2/4, 3/4, then the full rate
    cfg = OptimConfig(lr=0.1, warmup_steps=4)
    assert [cfg.lr_factor(s) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert OptimConfig(warmup_steps=0).lr_factor(0) == 1.0


def test_both_trainers_take_the_warm_up_from_the_config():
    """The torch trainer's scheduler steps through `OptimConfig.lr_factor` (the megatron trainer calls it directly)."""
    from engine.backends.torch_trainer import TorchTrainer
    from engine.backends.config import BatchConfig, LossConfig

    model = torch.nn.Linear(2, 2)
    t = TorchTrainer(model, OptimConfig(lr=0.1, warmup_steps=4), LossConfig(), BatchConfig(4, 4, 4))
    lrs = []
    for _ in range(5):
        lrs.append(t.opt.param_groups[0]["lr"])
        t.opt.step()
        t.sched.step()
    assert [round(x, 6) for x in lrs] == [0.025, 0.05, 0.075, 0.1, 0.1]


def test_stop_window_and_rule():
    chars = "abcdefgh"
    decode = lambda ids: "".join(chars[i] for i in ids)  # noqa: E731  one character per token
    assert stop_window(("ab", "xyz")) == 3 + 4
    ids = [0, 1, 2, 3]
    assert [stops_at(ids, t, ("cd",), decode) for t in range(4)] == [False, False, False, True]
    assert stops_at(torch.tensor(ids), 3, ("cd",), decode)  # a tensor row, as the hf generator passes
    assert not stops_at(ids, 3, (), decode)
    # only the window before t is decoded: a stop string that ended earlier still shows up in it
    assert stops_at([0, 1, 2, 3, 4], 4, ("bc",), decode)
    long_ago = list(range(8)) * 2  # "abcdefghabcdefgh": "ab" at 0 and 8
    assert not stops_at(long_ago, 15, ("ab",), decode)


def test_split_rows_keeps_groups_only_when_whole():
    batch = pack_groups([[1, 2], [3]], [[4], [5, 6], [7], [8]], group_size=2, pad_id=0)  # 2 prompts x 2
    assert sequences_per_group(batch) == 2
    whole = split_rows(batch, 2)
    assert [c["responses"].shape[0] for c in whole] == [2, 2]
    assert [c["prompt_ids"].tolist() for c in whole] == [[[1, 2]], [[0, 3]]]
    cut = split_rows(batch, 3)  # 3 is not a multiple of the group size: flat layout only
    assert [c["responses"].shape[0] for c in cut] == [3, 1]
    assert all(k not in c for c in cut for k in GROUP_KEYS)
    flat = {k: v for k, v in batch.items() if k not in GROUP_KEYS}
    assert sequences_per_group(flat) == 0


def test_left_pad():
    ids, mask = left_pad([[5], [6, 7, 8]], pad_id=0)
    assert ids.tolist() == [[0, 0, 5], [6, 7, 8]]
    assert mask.tolist() == [[0, 0, 1], [1, 1, 1]]


def test_atomic_path_replaces_whole_or_not_at_all(tmp_path):
    import pytest

    from engine.core.atomic import atomic_path, write_json_atomic

    target = tmp_path / "report.json"
    write_json_atomic(target, {"a": 1}, sort_keys=True)
    assert target.read_text() == '{"a": 1}'
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            assert tmp.parent == target.parent and tmp.suffix == ".json"  # same folder, same suffix
            tmp.write_text('{"a": 2, "cut')
            raise RuntimeError("crash mid-write")
    assert target.read_text() == '{"a": 1}'  # the old file, whole
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]  # no temporary file left
