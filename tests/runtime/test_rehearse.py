"""`engine rehearse`: the paper specs' own plans through the real runtime, stand-ins at the GPU edge.

The ledger-only rehearsals (every worker in this process) run each paper plan with a smaller prompt
batch (per-device shapes, micro-batches, lengths and the call order are the plan's; only the number of
micro-batches changes) so the ten fit the suite; the full-size plans are rehearsed by the slow tests
and, one command each, in README. Negative controls put a defect of main 1155b1c back into the runtime
and check the rehearsal names it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAPER = ["qwen2.5-0.5b", "qwen2.5-1.5b", "qwen2.5-7b", "qwen2.5-14b", "qwen2.5-32b", "qwen2.5-math-7b",
         "llama3.1-8b", "mistral-7b", "mistral-24b", "deepseek-math-7b"]
#: fewer prompts per step (mini-batch 16 x 8 sequences still splits over every plan's DP x micro-batch)
SMALL = ["data.train_batch_size=16", "algorithm.ppo_mini_batch_size=16", "evaluation.samples_by_benchmark={}"]


def _plan(name: str, *overrides: str):
    from compiler import compile_spec

    return compile_spec(str(ROOT / "specs" / f"{name}.yaml"), list(overrides))


def _rehearse(plan, **kw):
    from engine.rehearse.runner import rehearse

    return rehearse(plan, log=lambda s: None, **kw)


@pytest.mark.parametrize("name", PAPER + ["ablations/qwen2.5-7b-fp8"])  # + the FP8 ablation (issue 16)
def test_each_paper_plan_runs_through_the_runtime_within_capacity(name):
    plan = _plan(name, *SMALL)
    assert plan.feasible, plan.reasons
    r = _rehearse(plan, steps=1, ray_nodes=0)
    assert r["ok"], r["violations"]
    assert r["steps_done"] == 1 and len(r["devices"]) == len(plan.devices)
    for d in r["devices"]:
        assert 0 < d["peak_gib"] <= d["capacity_gib"], d
        assert {"generation", "log_probs", "train", "sync"} <= set(d["phases_gib"]), d["phases_gib"]
    # the runtime's call order on device 0, as sync.py owns it: sample, sleep, trainer passes, release, wake
    calls = r["call_order_device0"]
    first_gen = next(i for i, c in enumerate(calls) if "generator.generate" in c)
    sleep = next(i for i, c in enumerate(calls) if "generator.sleep" in c and i > first_gen)
    lp = next(i for i, c in enumerate(calls) if "compute_log_probs" in c and i > first_gen)
    assert sleep < lp, calls[first_gen:lp + 1]


def test_the_report_names_the_worst_margin_and_every_replica_launch():
    plan = _plan("qwen2.5-7b", *SMALL)
    r = _rehearse(plan, steps=1, ray_nodes=0)
    w = r["worst"]
    assert w["margin_gib"] == min(d["margin_gib"] for d in r["devices"])
    assert len(r["launches"]) == plan.rollout.replicas
    L = r["launches"]["0"]
    assert L["executor"] == "ray" and L["tensor_parallel"] == 2 and L["bundle_indices"] == [0, 1]
    assert L["per_worker_gpus"] == 0.5 and L["env"]["VLLM_RAY_BUNDLE_INDICES"] == "0,1"
    assert L["max_model_len"] >= plan.spec.data.max_prompt_length + plan.spec.evaluation.max_response_length
    from engine.rehearse.report import render

    text = render(r)
    assert "worst margin: device" in text and "violations: none" in text


# -- negative controls: each defect the rehearsal exists to find, put back, is named ------------------------

def test_a_bare_cuda_device_is_a_violation(monkeypatch):
    import engine.runtime.roles as roles

    monkeypatch.setattr(roles, "worker_device", lambda plan: "cuda")  # main 1155b1c's G1
    r = _rehearse(_plan("qwen2.5-1.5b", *SMALL), steps=1, ray_nodes=0)
    assert not r["ok"] and any("no index" in v["message"] for v in r["violations"]), r["violations"]


def test_the_parity_gate_with_the_generator_awake_overflows_the_last_stage(monkeypatch):
    """G2: trainer log-probs beside vLLM's whole reservation (the gate before the fix)."""
    import engine.runtime.loop as loop

    real = loop.StepOrder.after_generation
    calls = {"n": 0}

    def awake_at_first(self, roles):  # the gate's (first) call skips the sleep, as 1155b1c did
        calls["n"] += 1
        if calls["n"] > 1:
            real(self, roles)

    monkeypatch.setattr(loop.StepOrder, "after_generation", awake_at_first)
    r = _rehearse(_plan("qwen2.5-7b", *SMALL), steps=1, ray_nodes=0)
    mem = [v for v in r["violations"] if v["kind"] == "memory"]
    assert mem and all(v["phase"] == "log_probs" for v in mem), r["violations"]


def test_without_releasing_the_allocator_the_kv_cache_wake_overflows(monkeypatch):
    """G3: the trainer's cached activations and logits still reserved when vLLM re-maps its KV cache."""
    import engine.runtime.workers as W

    monkeypatch.setattr(W.TrainerWorker, "release_memory", W.dispatch(W.Mode.ALL)(lambda self: None))
    r = _rehearse(_plan("qwen2.5-7b", *SMALL), steps=1, ray_nodes=0)
    mem = [v for v in r["violations"] if v["kind"] == "memory"]
    assert mem and "cached" in mem[0]["message"] and mem[0]["phase"] == "generation", r["violations"]
    assert "release_memory" in mem[0]["fix"]


def test_generators_started_after_the_trainer_fail_vllm_start_check():
    """vLLM refuses to start on less free memory than utilization x total."""
    from engine.rehearse.ledger import LedgerBook
    from engine.rehearse.standins import RehearsalGenerator, RehearsalSetup
    from engine.backends.registry import BackendContext
    from compiler import memory as M

    plan = _plan("qwen2.5-14b")
    book = LedgerBook({d.rank: 80 * M.GIB for d in plan.devices}, {d.rank: 78 * M.GIB for d in plan.devices})
    book.hold(0, "trainer", "optimizer", 25 * M.GIB, "start")  # a trainer built first
    RehearsalGenerator(BackendContext(plan, "m", "m", "cuda:0", rehearsal=RehearsalSetup(book), replica=0))
    (v,) = [v for v in book.violations if v.kind == "vllm_start"]
    assert v.device == 0 and "60.0 GiB free at start" in v.message


def test_a_tp2_replica_in_one_actor_is_refused_as_vllm_would():
    """G5: vLLM's uni/mp executor with TP 2 inside an actor that sees one GPU."""
    import dataclasses

    import engine.rehearse.standins as S
    from compiler import memory as M
    from engine.backends.registry import BackendContext
    from engine.rehearse.ledger import LedgerBook

    plan = _plan("qwen2.5-7b")
    book = LedgerBook({d.rank: 80 * M.GIB for d in plan.devices}, {d.rank: 78 * M.GIB for d in plan.devices})
    gen = S.RehearsalGenerator.__new__(S.RehearsalGenerator)
    gen.plan, gen.book, gen.replica, gen.ranks, gen.gpu, gen.max_model_len = plan, S.Book(book), 0, [0, 1], True, 17408
    from engine.backends.vllm_launch import replica_launch

    gen.launch = dataclasses.replace(replica_launch(plan, 0), executor="mp", actor_gpus=0.5)  # 1155b1c's wiring
    gen._check_launch()
    assert any("World size larger than the number of available GPUs" in v.message for v in book.violations)


def test_evaluation_longer_than_max_model_len_is_named():
    plan = _plan("qwen2.5-7b", *SMALL)
    short = plan.model_copy(update={"rollout": plan.rollout.model_copy(update={"max_model_len": 9216})})
    r = _rehearse(short, steps=1, ray_nodes=0)
    v = [v for v in r["violations"] if v["kind"] == "engine_args"]
    assert v and "max_model_len 9216" in v[0]["message"] and "evaluation.max_response_length" in v[0]["fix"]


# -- real placement ------------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_the_two_node_7b_plan_places_on_a_two_node_ray_cluster():
    """Both nodes of the 7B plan for real (ray.cluster_utils.Cluster, 2 x 8 fake GPUs): every trainer rank
    and replica an actor in its bundle, vLLM's TP workers scheduled beside the trainer's share."""
    plan = _plan("qwen2.5-7b", *SMALL)
    r = _rehearse(plan, steps=1, ray_nodes=2)
    assert r["ok"], r["violations"]
    assert r["placement"]["real_nodes"] == [0, 1] and r["placement"]["real_devices"] == 16
    scheduled = [n for n in r["notes"] if "TP workers scheduled" in n]
    assert len(scheduled) == plan.rollout.replicas, r["notes"]


def test_engine_rehearse_cli_prints_json_and_exits_by_the_verdict():
    """The command users run before a cluster job (the full-size plans: README, one command each)."""
    def run(*args):
        return subprocess.run([sys.executable, "-m", "engine.cli", "rehearse", *args], capture_output=True, text=True,
                              cwd=ROOT, timeout=1200)

    out = run(str(ROOT / "specs" / "qwen2.5-1.5b.yaml"), *SMALL, "--steps", "1", "--no-ray", "--json")
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads(out.stdout)
    assert r["ok"] and len(r["devices"]) == 8 and r["placement"]["ray"] is False
    assert all(d["peak_gib"] <= d["capacity_gib"] and d["planned_peak_gib"] > 0 for d in r["devices"])
    refused = run(str(ROOT / "specs" / "qwen2.5-14b.yaml"), "trainer.offload=false", "--no-ray")
    assert refused.returncode == 1 and "not feasible" in refused.stderr and "headroom" in refused.stderr


def test_the_colocated_sync_by_handles_charges_its_buffers(monkeypatch):
    """Every trainer rank hands the vLLM worker on its GPU two buffers at sync: the rehearsal's ledger
    charges them, so its sync phase is the plan's; without them it would be two buffers lower."""
    from engine.rehearse import standins

    plan = _plan("qwen2.5-1.5b", *SMALL)
    ws = plan.weight_sync
    assert (ws.method, ws.in_trainer, len(ws.senders)) == ("handles", False, 8)
    r = _rehearse(plan, steps=1, ray_nodes=0)
    assert r["ok"], r["violations"]
    calls = r["call_order_device0"]
    assert calls.index("generator0: generator.receive_by_handles [sync]") < calls.index("trainer: handles.send [sync]")
    d = r["devices"][0]
    assert d["phases_gib"]["sync"] == pytest.approx(d["planned_phases_gib"]["sync"], abs=0.01)
    # negative control: a sender whose buffers cost nothing
    real_init = standins.RehearsalHandleSender.__init__

    def free_buffers(self, *args):
        real_init(self, *args)
        self.nbytes = 0.0

    monkeypatch.setattr(standins.RehearsalHandleSender, "__init__", free_buffers)
    low = _rehearse(plan, steps=1, ray_nodes=0)["devices"][0]["phases_gib"]["sync"]
    assert d["phases_gib"]["sync"] - low == pytest.approx(ws.buffers * ws.buffer_bytes / 2**30, abs=0.01)
