"""The weight-sync cost model (`compiler/sync_cost.py`) against hand-worked numbers, and the plans it
shapes: colocated vLLM plans sync by handles, sleep at level 2, and estimate the sync from the model."""

from __future__ import annotations

from pathlib import Path

import pytest

from compiler import compile_spec
from compiler import memory as M
from compiler.placement import COPY_BW_EFF, HOST_BROADCAST_BW, INTERNODE_BW, NVLINK_BW
from compiler.sync_cost import (HANDLE_BUFFERS, broadcast_seconds, export_gather_seconds, handle_buffer_bytes,
                                handles_seconds, sleep_copy_seconds, sleep_level, tree_rounds)

ROOT = Path(__file__).resolve().parents[2]


def test_tree_rounds_are_ceil_log2_of_one_plus_the_receivers():
    # 1 receiver: one send; 8: 1 -> 2 -> 4 -> 8 -> 9 processes hold it after 4 rounds; 64: 2^7 = 128 >= 65
    assert [tree_rounds(n) for n in (0, 1, 2, 3, 7, 8, 16, 64, 128)] == [0, 1, 2, 2, 3, 4, 5, 7, 8]


def test_the_issue_figures_for_a_gloo_broadcast():
    # Qwen2.5-32B: 32.76e9 params x 2 bytes to 64 receivers at 2 GB/s: 7 rounds x 65.5 GB / 2 GB/s
    model = 2 * 32.76e9
    assert broadcast_seconds(model, 64, 2e9) == pytest.approx(7 * 32.76, rel=1e-12)  # 229.3 s
    assert broadcast_seconds(model, 64, 2e9) == pytest.approx(229.3, abs=0.05)
    assert broadcast_seconds(1e9, 16, 1e9) == 5.0


def test_handles_are_two_local_copies_and_the_gathers_what_arrives():
    assert handles_seconds(3e9, 1.5e12) == pytest.approx(4e-3)  # pack + load, 3 GB each at 1.5 TB/s
    assert handles_seconds(3e9, 1.5e12, copies=1) == pytest.approx(2e-3)
    # TP8: 7/8 of the model arrives over NVLink; PP4: 3/4 of it from the other stages
    assert export_gather_seconds(64e9, 8, 1, 100e9, 25e9) == pytest.approx(64 * 7 / 8 / 100)
    assert export_gather_seconds(64e9, 8, 4, 100e9, 25e9) == pytest.approx(0.56 + 64 * 3 / 4 / 25)
    assert export_gather_seconds(64e9, 1, 1, 100e9, 25e9) == 0.0


def test_sleep_level_two_where_the_sync_overwrites_every_weight():
    assert sleep_level(1, sleep_mode=True) == 2 and sleep_level(2, sleep_mode=True) == 2
    assert sleep_level(1, sleep_mode=True, sync_overwrites_all=False) == 1
    assert sleep_level(0, sleep_mode=True) == 0 and sleep_level(1, sleep_mode=False) == 0
    # level 1 copies the weights to host and back once per step; 2 drops them
    assert sleep_copy_seconds(8e9, 1, 25e9) == pytest.approx(0.64) and sleep_copy_seconds(8e9, 2, 25e9) == 0.0


def test_a_buffer_holds_the_largest_bucket_the_stream_makes():
    assert handle_buffer_bytes(512 << 20, 10) == (512 << 20) + (1 << 20)
    assert handle_buffer_bytes(512 << 20, 1_557_135_360) == 1_557_135_360 + (1 << 20)  # 32B's embedding


def test_the_32b_plan_syncs_by_handles_and_estimates_from_the_model():
    plan = compile_spec(str(ROOT / "specs" / "qwen2.5-32b.yaml"))
    ws, t = plan.weight_sync, plan.trainer
    assert (ws.method, ws.in_trainer, ws.buffers) == ("handles", False, HANDLE_BUFFERS)
    assert ws.senders == ws.receivers == plan.rollout.ranks and len(ws.receivers) == 64
    emb = 2 * plan.architecture.vocab_size * plan.architecture.hidden_size
    assert ws.buffer_bytes == emb + (1 << 20)
    assert plan.rollout.sleep_level == 2
    # the estimate, recomputed by hand from the plan's layout: TP8 inside a node, PP4 across nodes
    model = 2.0 * M.total_params(plan.architecture)
    assert (t.tensor_parallel, t.pipeline_parallel) == (8, 4)
    bw = plan.spec.cluster.gpu_mem_bandwidth_gbs * 1e9
    expect = model * (7 / 8 / NVLINK_BW + 3 / 4 / INTERNODE_BW) + 2 * model / (COPY_BW_EFF * bw / 2)
    assert plan.estimates.sync_time_s == pytest.approx(expect, abs=0.006)
    # a gloo broadcast to the same 64 workers: 7 rounds at 2 GB/s, about 90 times longer
    assert broadcast_seconds(model, 64, HOST_BROADCAST_BW) / plan.estimates.sync_time_s > 50
    note = next(n for n in plan.notes if n.startswith("weight sync by handles"))
    assert "7 tree rounds to 64 receivers" in note
    # the rank hands over two buffers at sync: charged to the sync phase
    assert plan.devices[0].phases_gib["sync"] > 0


def test_sync_phase_charges_the_handle_buffers():
    from dataclasses import replace

    from compiler.placement import Inputs, _trainer_stage_memory
    from compiler.catalog import CATALOG

    plan = compile_spec(str(ROOT / "specs" / "qwen2.5-7b.yaml"))
    ws, t = plan.weight_sync, plan.trainer
    inp = Inputs.from_spec(plan.spec, CATALOG[plan.spec.model.name])
    assert inp.handles
    args = (t.tensor_parallel, t.pipeline_parallel, t.context_parallel, t.data_parallel, 0, t.gradient_accumulation)
    with_handles = _trainer_stage_memory(inp, *args)["sync"]
    without = _trainer_stage_memory(replace(inp, handles=False), *args)["sync"]
    assert with_handles["handle_buffers"] == ws.buffers * ws.buffer_bytes
    assert sum(with_handles.values()) - sum(without.values()) == ws.buffers * ws.buffer_bytes


def test_cpu_colocated_vllm_syncs_by_handles_inside_the_trainer_and_hf_shares_its_module():
    v = compile_spec(str(ROOT / "specs" / "quickstart.yaml"), ["rollout.backend=vllm"])
    assert (v.weight_sync.method, v.weight_sync.in_trainer, v.weight_sync.senders) == ("handles", True, [0])
    assert v.rollout.sleep_level == 2
    h = compile_spec(str(ROOT / "specs" / "quickstart.yaml"))
    assert (h.weight_sync.method, h.rollout.sleep_level) == ("in_process", 0)
    s = compile_spec(str(ROOT / "specs" / "quickstart.yaml"), ["rollout.backend=vllm", "placement=split"])
    assert (s.weight_sync.method, s.weight_sync.backend, s.rollout.sleep_level) == ("broadcast", "gloo", 0)


def test_cpu_buffers_hold_fp32_tensors_and_never_outgrow_the_model():
    from compiler.catalog import CATALOG

    tiny = compile_spec(str(ROOT / "specs" / "quickstart.yaml"), ["rollout.backend=vllm"])
    assert tiny.weight_sync.buffer_bytes == 4 * M.total_params(tiny.architecture) + (1 << 20)  # not 512 MiB
    half = compile_spec(str(ROOT / "specs" / "qwen2.5-0.5b.yaml"), ["cluster.accelerator=cpu"])
    arch = CATALOG["qwen2.5-0.5b"]
    emb32 = 4 * arch.vocab_size * arch.hidden_size  # 544 MB of fp32 embedding: larger than a 512 MiB bucket
    assert emb32 > 512 << 20 and half.weight_sync.buffer_bytes == emb32 + (1 << 20)
