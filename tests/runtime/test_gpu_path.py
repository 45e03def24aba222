"""The GPU plan's path through the runtime, on CPU: what the workers hand the backends and in which order
they call them, for a paper spec's own plan (Qwen2.5-0.5B on one GPU: vLLM colocated in the trainer's
process). The backends are recording fakes injected where the registry's builders are called; the
workers, roles, step order and parity gate are the runtime's own.

Each test here failed on main 1155b1c (G1: a bare "cuda" device; G2: the parity gate's trainer pass
with vLLM awake; G3: no allocator release before vLLM re-maps; the reference never offloaded; G7: the
rendezvous host from gethostbyname(gethostname()))."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch

from engine.backends.base import Generation

ROOT = Path(__file__).resolve().parents[2]
EVENTS: list[str] = []


class FakeTrainer:
    def __init__(self, ctx):
        self.device, self.frozen = ctx.device, ctx.frozen
        self.who = "reference" if ctx.frozen else "trainer"
        EVENTS.append(f"{self.who}.build({ctx.device})")
        torch.device(ctx.device)  # the string must parse

    def compute_log_probs(self, batch, with_entropy=False):
        EVENTS.append(f"{self.who}.log_probs")
        return torch.zeros(batch["responses"].shape)

    def update(self, batch):
        EVENTS.append(f"{self.who}.update")
        return {"trainer/grad_norm": 1.0}

    def weight_names(self):
        return ["w"]

    def weight_stream(self, bucket_bytes):
        EVENTS.append(f"{self.who}.weight_stream")
        yield [("w", torch.zeros(1))]

    def offload(self):
        EVENTS.append(f"{self.who}.offload")

    def onload(self):
        EVENTS.append(f"{self.who}.onload")

    def release_memory(self):
        EVENTS.append(f"{self.who}.release_memory")

    def save_checkpoint(self, folder): ...

    def load_checkpoint(self, folder): ...

    def export_hf(self, path): ...

    def close(self): ...


class FakeHandleSender:
    """The trainer rank's handle sender (its buffers would be on the GPU): runs the stream."""

    def __init__(self, ctx, names):
        EVENTS.append(f"handles.build({ctx.device})")
        self.channel = ("handles.sock", "00")

    def send(self, stream, names=None, alive=None):
        return sum(len(b) for b in stream)

    def close(self): ...


class FakeGenerator:
    def __init__(self, ctx, shared=None):
        EVENTS.append(f"generator.build({ctx.device})")
        self.events = []

    def generate(self, prompt_ids, n, params, seed):
        EVENTS.append("generator.generate")
        ids = [[1, 2] for _ in range(len(prompt_ids) * n)]
        return Generation(ids, ["stop"] * len(ids), ["\\boxed{1}"] * len(ids), {},
                          log_probs=[[0.0, 0.0] for _ in ids] if params.logprobs else None)

    def update_weights(self, buckets, expected=None):
        EVENTS.append("generator.update_weights")
        return sum(len(b) for b in buckets)

    def receive_by_handles(self, channels, expected=None):
        EVENTS.append(f"generator.receive_by_handles({channels[0][0]})")
        return len(expected or [])

    def sleep(self, level=1):
        EVENTS.append(f"generator.sleep({level})")

    def wake(self, tags=None):
        EVENTS.append(f"generator.wake({','.join(tags or [])})")

    def reset_prefix_cache(self): ...

    def close(self): ...


@pytest.fixture
def gpu_roles(monkeypatch, tmp_path):
    """The runtime's roles for the shipped Qwen2.5-0.5B plan (1 GPU), with recording backends."""
    import engine.runtime.workers as W
    from compiler import compile_spec
    from engine.model_files import ModelFiles
    from engine.quickstart.tokenizer import build_tokenizer
    from engine.runtime.roles import Roles

    monkeypatch.setattr(W, "build_trainer", lambda ctx: FakeTrainer(ctx))
    monkeypatch.setattr(W, "build_generator", lambda ctx, shared=None: FakeGenerator(ctx, shared))
    monkeypatch.setattr(W, "build_handle_sender", FakeHandleSender)
    plan = compile_spec(str(ROOT / "specs" / "qwen2.5-0.5b.yaml"), ["reward.workers=0"])
    assert plan.accelerator == "gpu" and len(plan.devices) == 1
    assert (plan.weight_sync.method, plan.weight_sync.in_trainer) == ("handles", True)
    tok = build_tokenizer()
    files = ModelFiles(str(tmp_path), str(tmp_path), tok, (int(tok.eos_token_id),), ("<|endoftext|>",))
    EVENTS.clear()
    roles = Roles(plan, files, threads=1)
    yield plan, roles, tok
    roles.shutdown()


def test_g1_workers_get_an_indexed_cuda_device(gpu_roles):
    """torch.cuda.set_device refuses a bare 'cuda' ("Expected a torch.device with a specified index")."""
    builds = [e for e in EVENTS if ".build(" in e]
    assert builds and all(e.endswith("(cuda:0)") for e in builds), builds
    assert all(torch.device(e[e.index("(") + 1:-1]).index == 0 for e in builds)


def _inputs(plan, tok):
    from engine.data.prompts import PromptSet
    from engine.runtime.loop import StepInputs
    from engine.runtime.sync import StepOrder
    from engine.sampling import sampling_params

    n = plan.spec.data.train_batch_size
    data = PromptSet([[3, 4, 5]] * n, ["q"] * n, ["1"] * n, [None] * n, ["s"] * n, {})
    return StepInputs(plan, data, sampling_params(plan.sampling, (int(tok.eos_token_id),), logprobs=True),
                      int(tok.pad_token_id), StepOrder(plan))


def test_g2_the_parity_gate_computes_trainer_log_probs_with_the_generator_asleep(gpu_roles):
    from engine.runtime.loop import parity_gate

    plan, roles, tok = gpu_roles
    EVENTS.clear()
    parity_gate(roles, _inputs(plan, tok), lambda s: None)
    gen, lp = EVENTS.index("generator.generate"), EVENTS.index("trainer.log_probs")
    assert "generator.sleep(2)" in EVENTS[gen:lp], EVENTS  # level 2: the sync rewrites all weights
    # and the generator is awake again (weights and KV cache) afterwards, for step 1's generation
    assert EVENTS[-1] == "generator.wake(kv_cache)", EVENTS


def test_g3_the_trainer_releases_its_cached_memory_before_the_generator_maps_it(gpu_roles):
    from engine.runtime.sync import StepOrder

    plan, roles, _ = gpu_roles
    EVENTS.clear()
    StepOrder(plan).after_update(roles)
    wake_w, wake_kv = EVENTS.index("generator.wake(weights)"), EVENTS.index("generator.wake(kv_cache)")
    push = EVENTS.index("trainer.weight_stream")
    assert "trainer.release_memory" in EVENTS[:wake_w], EVENTS  # before the weights come back
    assert "trainer.release_memory" in EVENTS[push:wake_kv], EVENTS  # and again before the KV cache does


def test_offload_takes_the_reference_off_the_device_too(monkeypatch, tmp_path):
    """The memory model counts the reference as offloaded with the trainer (`plan.offload.generation`)."""
    import engine.runtime.workers as W
    from compiler import compile_spec

    monkeypatch.setattr(W, "build_trainer", lambda ctx: FakeTrainer(ctx))
    plan = compile_spec(str(ROOT / "specs" / "qwen2.5-0.5b.yaml"), ["trainer.offload=true"])
    assert "reference" in plan.offload.generation
    w = W.TrainerWorker(W.WorkerSetup(plan.to_json(), str(tmp_path), str(tmp_path), "cuda:0"), 0, 1, False, True)
    w.start()
    EVENTS.clear()
    w.offload()
    w.onload()
    assert EVENTS == ["trainer.offload", "reference.offload", "trainer.onload", "reference.onload"]


def test_g7_the_rendezvous_host_is_the_ray_node_ip(monkeypatch, tmp_path):
    """Stock images resolve their hostname to 127.0.1.1, which no other node can reach."""
    import ray  # a base dependency
    import engine.runtime.workers as W
    from compiler import compile_spec

    plan = compile_spec(str(ROOT / "specs" / "qwen2.5-0.5b.yaml"))
    monkeypatch.setattr(socket, "gethostbyname", lambda name: "127.0.1.1")
    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        w = W.TrainerWorker(W.WorkerSetup(plan.to_json(), str(tmp_path), str(tmp_path), "cuda:0"), 0, 2)
        host = w.rendezvous().removeprefix("tcp://").rsplit(":", 1)[0]
        assert host == ray.util.get_node_ip_address() and host != "127.0.1.1"
    finally:
        if started:
            ray.shutdown()


def test_a_node_that_does_not_see_the_shared_folders_is_named(tmp_path):
    from engine.runtime.workers import SharedPathError, check_shared_paths

    check_shared_paths([str(tmp_path)])
    with pytest.raises(SharedPathError, match=r"does not see .*/nowhere/run: .*every node mounts at the same path"):
        check_shared_paths([str(tmp_path), str(tmp_path / "nowhere" / "run")])


def test_network_interface_reaches_gloo_and_nccl(monkeypatch, tmp_path):
    import os

    import engine.runtime.workers as W
    from compiler import compile_spec

    # setenv first so that monkeypatch records the variables and restores them (unset) afterwards: a leaked
    # GLOO_SOCKET_IFNAME=eth7 breaks every later gloo group in this process and in the children it starts
    for name in ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME"):
        monkeypatch.setenv(name, "unset")
        monkeypatch.delenv(name)
    plan = compile_spec(str(ROOT / "specs" / "qwen2.5-0.5b.yaml"), ["cluster.network_interface=eth7"])
    W.TrainerWorker(W.WorkerSetup(plan.to_json(), str(tmp_path), str(tmp_path), "cuda:0"))
    assert os.environ["GLOO_SOCKET_IFNAME"] == "eth7" and os.environ["NCCL_SOCKET_IFNAME"] == "eth7"


def test_evaluation_samples_its_own_length_not_the_training_one():
    from compiler import compile_spec
    from engine.sampling import sampling_params

    plan = compile_spec(str(ROOT / "specs" / "qwen2.5-7b.yaml"))
    sp = sampling_params(plan.evaluation.sampling, (1,))
    assert sp.max_new_tokens == 16384 and plan.rollout.max_model_len >= 1024 + sp.max_new_tokens
