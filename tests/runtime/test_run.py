"""`engine run` end to end on a tiny real model: run folder, metrics, aim repo, HF export, errors."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from engine.cli import main
from tests.runtime.conftest import write_spec

ROOT = Path(__file__).resolve().parents[2]


def test_run_writes_the_run_folder(tmp_path, capsys):
    spec = write_spec(tmp_path, steps=2, every=1, eval_every=2)
    run = tmp_path / "run"
    assert main(["run", str(spec), "--run-dir", str(run)]) == 0
    err = capsys.readouterr().err
    assert "step 2/2" in err and "reward" in err and "ETA" in err
    for name in ("plan.json", "run.json", "metrics.jsonl", "summary.json", ".aim", "final/config.json"):
        assert (run / name).exists(), name
    summary = json.loads((run / "summary.json").read_text())
    assert summary["complete"] and summary["steps_done"] == 2
    assert summary["data_train"]["kept"] == 64 and summary["data_train"]["too_long"] == 0
    records = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    for key in ("reward/mean", "reward/accuracy", "response_length/mean", "response_length/max",
                "response_length/min", "response_length/clip_ratio", "response_length/stopped_length",
                "trainer/entropy", "trainer/kl", "trainer/grad_norm", "perf/tokens_per_s", "time/step_s"):
        assert key in records[0], key
    assert "val/accuracy" in records[1]

    from aim import Repo

    repo = Repo(str(run))
    hashes = repo.list_all_runs()
    assert len(hashes) == 1
    aim_run = repo.get_run(hashes[0])
    assert aim_run is not None
    names = {m.name for m in aim_run.metrics()}
    assert {"reward.mean", "response_length.clip_ratio", "trainer.kl"} <= names
    assert aim_run["spec"]["name"] == "tiny" and aim_run["plan"]["accelerator"] == "cpu"
    from aim.storage.context import Context

    assert len(list(aim_run.get_metric("reward.mean", Context({})).values.values_list())) == 2

    from engine.modeling import load_model, load_tokenizer

    model, tok = load_model(str(run / "final")), load_tokenizer(str(run / "final"))
    assert tok.decode(tok("Compute 1+2.")["input_ids"]) == "Compute 1+2."
    assert model.config.num_hidden_layers == 2

    # the same folder cannot be started again, only resumed
    assert main(["run", str(spec), "--run-dir", str(run)]) == 1
    assert "--resume" in capsys.readouterr().err


def test_invalid_spec_exits_2_without_traceback(tmp_path):
    spec = write_spec(tmp_path, extra="bogus_key: 1\n")
    p = subprocess.run([sys.executable, "-m", "engine.cli", "run", str(spec)], cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 2
    assert "bogus_key" in p.stderr and "Traceback" not in p.stderr


def test_plan_needing_gpus_stops_before_loading_anything(tmp_path):
    code = ("import sys, engine.cli as c; rc = c.main(['run', 'specs/mistral-24b.yaml']); "
            "print('MODEL_LIB_LOADED' if 'transformers' in sys.modules else 'CLEAN'); sys.exit(rc)")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert p.returncode == 1, p.stderr
    assert "needs" in p.stderr and "GPU" in p.stderr and "found" in p.stderr
    assert "ray_address" in p.stderr
    assert "128 GPU(s)" in p.stderr and "no GPU" in p.stderr
    assert "CLEAN" in p.stdout  # no model library was imported, let alone a model


def test_plans_the_runtime_cannot_execute_here_are_refused_before_loading(monkeypatch):
    from compiler import compile_spec
    from engine.runtime import resources
    from engine.runtime.resources import Found, ResourceError, check_resources

    one_h100 = Found(1, 80.0, "a test machine")
    plan = compile_spec(str(ROOT / "specs" / "qwen2.5-0.5b.yaml"))  # megatron trainer + vllm generator, 1 GPU
    assert plan.weight_sync.method == "in_process"
    assert check_resources(plan, found=one_h100) is one_h100
    # a backend whose package is not installed: named, with the install command
    monkeypatch.setattr(resources, "_missing_package", lambda name: name == "vllm")
    with pytest.raises(ResourceError) as info:
        check_resources(plan, found=one_h100)
    assert "generator backend 'vllm' needs vllm" in str(info.value) and "pip install" in str(info.value)
    monkeypatch.undo()
    # colocated GPUs: the weights go through host memory over gloo, which runs; CUDA IPC (reserved in
    # the plan's schema) is refused, not run another way
    eight = compile_spec(str(ROOT / "specs" / "qwen2.5-1.5b.yaml"))
    assert (eight.weight_sync.method, eight.weight_sync.backend) == ("broadcast", "gloo")
    assert check_resources(eight, found=Found(8, 80.0, "a test machine"))
    ipc = eight.model_copy(update={"weight_sync": eight.weight_sync.model_copy(update={"method": "cuda_ipc"})})
    with pytest.raises(ResourceError) as info:
        check_resources(ipc, found=Found(8, 80.0, "a test machine"))
    assert "weight sync 'cuda_ipc'" in str(info.value) and "Nothing was loaded" in str(info.value)


@pytest.mark.parametrize("overrides", [
    ["algorithm.advantage=gae"],                      # PPO with a critic and GAE
    ["algorithm.advantage=dr_grpo", "algorithm.loss_agg=auto", "algorithm.kl_estimator=k1"],  # the Dr.GRPO recipe
    ["data.max_pass_rate=0.9", "algorithm.ppo_mini_batch_size=4"],  # pass-rate selection, on-policy path
])
def test_algorithm_variants_run(tmp_path, overrides):
    from compiler import compile_spec
    from engine.runtime.loop import train

    plan = compile_spec(str(write_spec(tmp_path, steps=1)), overrides)
    summary = train(plan, tmp_path / "run")
    assert summary["complete"]
    rec = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    if "algorithm.advantage=gae" in overrides:
        assert "critic/value_loss" in rec
    if any(o.startswith("data.max_pass_rate") for o in overrides):
        rates = json.loads((tmp_path / "run" / "pass_rates.json").read_text())["rates"]
        assert len(rates) == 64
        kept = sum(r <= 0.9 for r in rates)
        assert summary["data_train"]["pass_rate_selected"] == kept
        assert summary["data_train"]["pass_rate_dropped"] == 64 - kept
