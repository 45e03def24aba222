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
    """Records which fields of ``root`` (the Plan by default) code under engine/ reads: attribute reads
    on ``root``'s own models (those defined in ``root``'s module, or in ``modules``), by the frame that
    reads them, outside the rehearsal's stand-ins (engine/rehearse/), which read a plan to check it,
    not to execute it. ``whole``: fields recorded as one (their own models are not followed).

    A model class reached by several paths (the Plan's ``sampling`` and ``evaluation.sampling``) is
    patched once; each instance's path is learnt when it is read from its parent, so a read is
    recorded under the path of the object it was made on (under every path of its class when the
    object was made elsewhere, by ``model_copy`` say)."""

    def __init__(self, root: type[BaseModel] = Plan, modules: tuple[str, ...] = (), whole: set[str] = WHOLE) -> None:
        self.root, self.modules, self.whole = root, {root.__module__, *modules}, whole
        self.read: set[str] = set()
        self._saved: list[tuple[type, object]] = []

    def __enter__(self) -> "FieldReads":
        paths: dict[type, list[str]] = {}  # class -> the prefixes it is reached by
        children: dict[type, dict[str, type]] = {}  # class -> {field: the followed sub-model's class}

        def walk(model: type[BaseModel], prefix: str) -> None:
            paths.setdefault(model, []).append(prefix)
            subs = children.setdefault(model, {})
            for name, info in model.model_fields.items():
                sub = _model_of(info.annotation)
                if sub is not None and sub.__module__ in self.modules and prefix + name not in self.whole:
                    subs[name] = sub
                    walk(sub, prefix + name + ".")

        walk(self.root, "")
        where: dict[int, tuple[str, object]] = {}  # id(instance) -> (its prefix, the instance, kept alive)
        read, root = self.read, self.root

        for model in paths:
            names, subs, original = set(model.model_fields), children[model], model.__getattribute__

            def getattribute(obj, name, _names=names, _subs=subs, _original=original, _model=model):
                value = _original(obj, name)
                if name in _names:
                    known = where.get(id(obj))
                    prefixes = [""] if type(obj) is root else [known[0]] if known and known[1] is obj else paths[_model]
                    if name in _subs and isinstance(value, BaseModel) and len(prefixes) == 1:
                        where[id(value)] = (prefixes[0] + name + ".", value)
                    caller = sys._getframe(1).f_code.co_filename
                    if caller.startswith(str(ENGINE)) and not caller.startswith(str(ENGINE / "rehearse")):
                        read.update(p + name for p in prefixes)
                return value

            self._saved.append((model, model.__dict__.get("__getattribute__")))
            model.__getattribute__ = getattribute
        return self

    def __exit__(self, *exc) -> None:
        for model, saved in reversed(self._saved):
            if saved is None:
                del model.__getattribute__
            else:
                model.__getattribute__ = saved


#: What the runtime may read from ``plan.spec``: the inputs the spec names, not settings it executes
#: (those are lowered into the Plan's own sections, which the test above checks are read). The base
#: model's files and how to build them (its seed, the synthetic data's seed included), the data files
#: and how to read them, where the benchmarks are, tracking, and the cluster's addresses and threads.
SPEC_INPUTS = frozenset({
    "name", "seed",
    "model.name", "model.path", "model.architecture", "model.init", "model.pretrain_steps", "model.tokenizer",
    "data.train", "data.val", "data.split", "data.levels", "data.prompt_template", "data.custom_template",
    "data.prompt_key", "data.answer_key", "data.max_prompt_length", "data.synthetic.",
    "evaluation.benchmarks", "evaluation.data_dir",
    "tracking.",
    "cluster.ray_address", "cluster.network_interface", "cluster.cpu_threads", "cluster.gpu_memory_gib",
})


def _an_input(path: str) -> bool:
    """``path`` is one of SPEC_INPUTS, under one, or a section on the way to one (``data``)."""
    return any(path == k or (k.endswith(".") and path.startswith(k)) or k.startswith(path + ".") for k in SPEC_INPUTS)


def _spec_reads():
    """A recorder of the runtime's reads of the resolved spec (`schemas`), field by field."""
    from schemas import ExperimentSpec

    return FieldReads(ExperimentSpec, modules=tuple(m for m in sys.modules if m.startswith("schemas.")),
                      whole={"model.architecture"})


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


def _run_on_cpu(tmp_path, monkeypatch, extra: tuple[str, ...] = (), name: str = "cpu-run") -> None:
    """The CPU default (hf generator, torch trainer) through `engine.runtime.loop.train`: pass-rate
    selection, an old-policy pass (two optimizer steps a batch), evaluation, checkpoints, export;
    ``extra``: further overrides (a gae run, with its critic)."""
    from compiler import compile_spec
    from engine.runtime.loop import train

    monkeypatch.setenv("ENGINE_CACHE_DIR", str(tmp_path / "cache"))
    plan = compile_spec(str(ENGINE.parent / "specs" / "quickstart.yaml"), [
        "model.pretrain_steps=0", "data.synthetic.size=64", "data.synthetic.val_size=8", "data.min_pass_rate=0.0",
        "algorithm.ppo_mini_batch_size=16", "trainer.micro_batch_size=64", "trainer.total_steps=2", "evaluation.every=1", "checkpoint.every=1",
        "tracking.backend=none", "cluster.cpu_threads=1", *extra])
    summary = train(plan, tmp_path / name, log=lambda _: None)
    assert summary["complete"] and summary["final_model"]


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
    with FieldReads() as reads, _spec_reads() as spec_reads:
        _run_the_gpu_plan(gpu)
        _run_the_gpu_plan(split)  # the broadcast group of a generator on GPUs of its own
        _probe_on_ray(ray_plan)
        _build_the_megatron_trainer(cpu, tmp_path, monkeypatch)
        _run_on_cpu(tmp_path, monkeypatch)
        _run_on_cpu(tmp_path, monkeypatch, ("algorithm.advantage=gae", "trainer.total_steps=1", "evaluation.every=0"), "gae-run")
    settings = sorted(f for f in spec_reads.read if not _an_input(f))
    assert settings == [], f"settings the runtime read from plan.spec instead of the Plan's own sections: {settings}"
    assert {"data.train", "model.init"} <= spec_reads.read  # the recorder saw the runtime read its inputs
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
