"""Every field of the Plan is executed by the runtime, or marked informational in compiler.plan."""

from __future__ import annotations

import sys
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

from compiler.plan import INFORMATIONAL, PLAN_VERSION, Plan

ENGINE = Path(__file__).resolve().parents[2] / "engine"
WHOLE = {"spec", "architecture"}  # read throughout the runtime as values of their own schemas


def _model_of(annotation) -> type[BaseModel] | None:
    for arg in (annotation, *typing.get_args(annotation), *[a for t in typing.get_args(annotation) for a in typing.get_args(t)]):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return None


def _fields(model: type[BaseModel], prefix: str = "") -> list[str]:
    out = []
    for name, info in model.model_fields.items():
        path = prefix + name
        sub = _model_of(info.annotation)
        if sub is not None and name not in WHOLE and path not in INFORMATIONAL:
            out.extend(_fields(sub, path + "."))
        else:
            out.append(path)
    return out


class FieldReads:
    """Records which Plan fields code under engine/ reads (attribute reads on the Plan's own models,
    by the frame that reads them), outside the rehearsal's stand-ins (engine/rehearse/), which read
    a plan to check it, not to execute it."""

    def __init__(self) -> None:
        self.read: set[str] = set()
        self._saved: list[tuple[type, object]] = []

    def __enter__(self) -> "FieldReads":
        import compiler.plan as P

        def patch(model: type[BaseModel], prefix: str) -> None:
            names = set(model.model_fields)
            original = model.__getattribute__
            read = self.read

            def getattribute(obj, name, _names=names, _prefix=prefix, _original=original):
                if name in _names:
                    caller = sys._getframe(1).f_code.co_filename
                    if caller.startswith(str(ENGINE)) and not caller.startswith(str(ENGINE / "rehearse")):
                        read.add(_prefix + name)
                return _original(obj, name)

            self._saved.append((model, model.__dict__.get("__getattribute__")))
            model.__getattribute__ = getattribute
            for name, info in model.model_fields.items():
                sub = _model_of(info.annotation)
                if sub is not None and sub.__module__ == P.__name__ and name not in WHOLE:
                    patch(sub, prefix + name + ".")

        patch(Plan, "")
        return self

    def __exit__(self, *exc) -> None:
        for model, saved in reversed(self._saved):
            if saved is None:
                del model.__getattribute__
            else:
                model.__getattribute__ = saved


def _run_the_gpu_plan(plan) -> None:
    """What the runtime does with a GPU plan, as far as CPU allows: the rehearsal runs one step of it
    through the real runtime (roles, worker groups, the colocated step order, weight sync, checkpoints),
    with stand-ins only at the GPU edge; the real GPU backends' and Ray's plan readers then run on
    the same plan for every rank and replica (the Megatron layout and configs, the vLLM engine and
    launch arguments, the Ray bundles), and the resource check before a run."""
    from engine.backends.config import from_plan
    from engine.backends.megatron.trainer import layout_from_plan
    from engine.backends.vllm_generator import engine_kwargs
    from engine.backends.vllm_launch import engine_launch_kwargs, replica_launch
    from engine.rehearse.runner import rehearse
    from engine.runtime.group import bundle_of, missing_resources
    from engine.runtime.resources import Found, check_resources

    report = rehearse(plan, steps=1, ray_nodes=0, log=lambda _: None)
    assert report["ok"], report["violations"]
    check_resources(plan, found=Found(plan.nodes * plan.gpus_per_node, 80.0, "a test cluster"))
    from_plan(plan)
    layout_from_plan(plan, "cuda:0")
    engine_kwargs(plan, "cuda:0")
    for replica in range(len(plan.rollout.replica_groups)):
        engine_launch_kwargs(replica_launch(plan, replica))
    for device in plan.devices:
        bundle_of(plan, device.rank)
    missing_resources(plan, {}, [{}])


def _build_the_megatron_trainer(plan, tmp_path, monkeypatch) -> None:
    """The registry's Megatron builder on a CPU plan (one process, its own one-rank gloo world)."""
    from engine.backends.registry import BackendContext, build_trainer
    from engine.quickstart.base_model import build_cached

    monkeypatch.setenv("ENGINE_CACHE_DIR", str(tmp_path / "cache"))
    model = build_cached(plan.spec, plan.architecture, log=lambda _: None)
    trainer = build_trainer(BackendContext(plan=plan, model_path=model, tokenizer_path=model))
    try:
        assert trainer.weight_names()
    finally:
        trainer.close()


def _probe_on_ray(plan) -> None:
    """`engine plan --probe`'s placement: one probe actor per (device, role) in the plan's bundles, on
    a real local Ray with fake GPUs."""
    import ray

    from engine.runtime.group import probe_placement

    if ray.is_initialized():
        ray.shutdown()
    ray.init(address="local", num_cpus=2, num_gpus=plan.nodes * plan.gpus_per_node, include_dashboard=False,
             log_to_driver=False)
    try:
        assert len(probe_placement(plan, timeout_s=120)) >= len(plan.devices)
    finally:
        ray.shutdown()


@pytest.mark.slow
@pytest.mark.needs("megatron")
def test_every_plan_field_is_read_by_the_runtime_or_informational(tmp_path, monkeypatch):
    """Not a search of the source for the field's name: the fields the runtime really reads when it
    executes plans: a paper spec's (14B: colocated vLLM + Megatron with trainer offload), a placement
    probed on Ray, and the real Megatron trainer built from the CPU quickstart's plan."""
    from compiler import compile_spec

    specs = ENGINE.parent / "specs"
    small = ["data.train_batch_size=16", "algorithm.ppo_mini_batch_size=16", "evaluation.samples_by_benchmark={}"]
    gpu = compile_spec(str(specs / "qwen2.5-14b.yaml"), small)
    ray_plan = compile_spec(str(specs / "qwen2.5-1.5b.yaml"), ["cluster.nodes=2", "cluster.gpus_per_node=4"])
    cpu = compile_spec(str(specs / "quickstart.yaml"), ["trainer.backend=megatron", "model.pretrain_steps=0"])
    assert gpu.feasible and ray_plan.feasible and gpu.trainer.offload, (gpu.reasons, ray_plan.reasons)
    split = compile_spec(str(specs / "qwen2.5-1.5b.yaml"), small + ["placement=split"])
    assert split.feasible and split.weight_sync.method == "broadcast", split.reasons
    with FieldReads() as reads:
        _run_the_gpu_plan(gpu)
        _run_the_gpu_plan(split)  # the broadcast group of a generator on GPUs of its own
        _probe_on_ray(ray_plan)
        _build_the_megatron_trainer(cpu, tmp_path, monkeypatch)
    fields = _fields(Plan)
    assert {"trainer.backend", "weight_sync.bucket_bytes", "offload.train", "rollout.sleep_level"} <= reads.read
    unread = [f for f in fields if f not in INFORMATIONAL and f not in WHOLE and f not in reads.read]
    assert unread == [], f"Plan fields the runtime never read, and not in compiler.plan.INFORMATIONAL: {unread}"
    assert INFORMATIONAL <= set(fields) | {f.rsplit(".", 1)[0] for f in fields} | {"estimates"}


def test_a_plan_of_another_version_is_refused():
    from compiler import compile_spec

    text = compile_spec(str(ENGINE.parent / "specs" / "quickstart.yaml")).to_json()
    assert Plan.from_json(text).version == PLAN_VERSION
    with pytest.raises(ValueError, match="plan version 1 is not the version this engine reads"):
        Plan.from_json(text.replace(f'"version": {PLAN_VERSION}', '"version": 1'))
