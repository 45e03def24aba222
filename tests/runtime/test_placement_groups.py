"""Ray placement groups from the plan, on a real local Ray instance with fake GPUs."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ray8():
    import ray  # a base dependency
    if ray.is_initialized():
        ray.shutdown()
    ray.init(address="local", num_cpus=2, num_gpus=8, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def _plan(*overrides: str):
    from compiler import compile_spec

    return compile_spec(str(ROOT / "specs" / "qwen2.5-1.5b.yaml"), list(overrides))


def test_two_nodes_of_four_gpus_become_placement_groups_matching_the_plan(ray8):
    from engine.runtime.group import probe_placement

    plan = _plan("cluster.nodes=2", "cluster.gpus_per_node=4")
    assert plan.feasible, plan.reasons
    assert [[(b.node, b.index, b.rank) for b in node] for node in plan.bundles] == \
        [[(0, i, i) for i in range(4)], [(1, i, 4 + i) for i in range(4)]]
    placed = probe_placement(plan, timeout_s=30)
    by_device = {}
    for p in placed:
        d = plan.devices[p["rank"]]
        assert p["role"] in d.roles and (p["group"], p["bundle"]) == (d.node, d.index)
        assert len(p["gpu_ids"]) == 1
        by_device.setdefault(p["rank"], set()).update(p["gpu_ids"])
    # every role of a device got that device's one GPU; the 8 devices got 8 different GPUs
    assert sorted(by_device) == list(range(8))
    assert all(len(ids) == 1 for ids in by_device.values())
    assert len({next(iter(ids)) for ids in by_device.values()}) == 8
    # colocated: trainer and generator actors share each bundle
    assert {p["role"] for p in placed if p["rank"] == 0} >= {"trainer", "generator"}


def test_a_plan_ray_cannot_place_fails_naming_what_is_missing(ray8):
    from engine.runtime.group import PlacementError, placement_groups

    plan = _plan("cluster.nodes=2", "cluster.gpus_per_node=8")  # 16 GPUs on a one-node cluster of 8
    assert plan.feasible, plan.reasons
    with pytest.raises(PlacementError) as info:
        placement_groups(plan, timeout_s=5)
    msg = str(info.value)
    assert "2 nodes with that much (the cluster has 1)" in msg and "GPU" in msg
    assert ray8.util.placement_group_table() == {} or all(
        g["state"] == "REMOVED" for g in ray8.util.placement_group_table().values())
