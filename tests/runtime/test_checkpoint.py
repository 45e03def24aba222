"""Atomic checkpoints: complete-or-absent folders, keep_last, partial writes ignored, RNG state."""

import random

import torch

from engine.runtime import checkpoint as C


def test_save_load_keep_last(tmp_path):
    for step in (2, 4, 6):
        C.save_checkpoint(tmp_path, step, {"w": torch.full((2,), float(step))}, {"note": "x"}, keep_last=2)
    assert C.list_checkpoints(tmp_path) == [4, 6]
    state, meta = C.load_checkpoint(tmp_path)
    assert meta["step"] == 6 and state["w"].tolist() == [6.0, 6.0]
    assert C.load_checkpoint(tmp_path, 4)[1]["step"] == 4


def test_partial_checkpoint_is_ignored_and_cleaned(tmp_path):
    C.save_checkpoint(tmp_path, 1, {"w": 1}, {})
    (tmp_path / ".tmp-step_000002-99").mkdir()  # a save killed half-way
    (tmp_path / "step_000003").mkdir()  # no meta.json: not complete
    assert C.list_checkpoints(tmp_path) == [1]
    assert C.clean_partial(tmp_path) == 1
    assert C.load_checkpoint(tmp_path)[1]["step"] == 1
    assert C.load_checkpoint(tmp_path / "none") is None


def test_resave_killed_between_renames_keeps_the_step(tmp_path):
    C.save_checkpoint(tmp_path, 5, {"w": 5}, {})
    # a re-save of step 5 killed after moving the old folder aside, before moving the new one in
    (tmp_path / "step_000005").rename(tmp_path / ".old-step_000005-1234")
    (tmp_path / ".tmp-step_000005-1234").mkdir()
    assert C.list_checkpoints(tmp_path) == []
    assert C.clean_partial(tmp_path) == 1  # the temporary folder; the old step is restored, not removed
    assert C.list_checkpoints(tmp_path) == [5]
    assert C.load_checkpoint(tmp_path)[0] == {"w": 5}


def test_rng_state_round_trip():
    s = C.rng_state()
    a = (random.random(), torch.rand(3).tolist())
    C.set_rng_state(s)
    assert (random.random(), torch.rand(3).tolist()) == a
