"""The same worker classes as Ray actors on a real local Ray instance: a full RL step."""

import json

import pytest

from tests.runtime.conftest import write_spec


@pytest.mark.slow
@pytest.mark.timeout(3600)  # a hang guard: starting Ray on a busy 2-core machine took 280 s (load 15)
def test_one_step_through_ray_actors(tmp_path):
    import ray  # a base dependency
    from compiler import compile_spec
    from engine.runtime.group import uses_ray
    from engine.runtime.loop import train

    spec = write_spec(tmp_path, steps=1, every=1)
    plan = compile_spec(str(spec), ["cluster.ray_address=local"])
    assert uses_ray(plan)
    try:
        summary = train(plan, tmp_path / "run")
        assert ray.is_initialized()
        assert summary["complete"] and summary["steps_done"] == 1
        rec = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
        assert rec["step"] == 1 and 0.0 <= rec["reward/mean"] <= 1.0 and rec["trainer/grad_norm"] > 0
        assert (tmp_path / "run" / "final" / "config.json").exists()
    finally:
        ray.shutdown()
