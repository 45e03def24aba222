"""What a new user hits first (issue 11): export round trip, resume checks, aim locks, engine eval of a
checkpoint, quiet output. One finished tiny run (real model, real aim repo) is shared by the module."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

from engine.cli import main
from tests.runtime.conftest import write_spec

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """(spec path, run folder) of a finished 2-step tiny run with aim tracking and two checkpoints."""
    folder = tmp_path_factory.mktemp("finished")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ENGINE_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "engine-cache"))
        spec = write_spec(folder, steps=2, every=1)
        run = folder / "run"
        assert main(["run", str(spec), "--run-dir", str(run), "--quiet"]) == 0
    return spec, run


def _copy(run: Path, dest: Path) -> Path:
    shutil.copytree(run, dest)
    return dest


# -- export ---------------------------------------------------------------------------------------

def test_final_folder_round_trips_through_the_auto_classes(finished):
    """AutoTokenizer/AutoModelForCausalLM on final/ tokenize as in training and give the same greedy text."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from engine.backends.base import SamplingParams
    from engine.backends.hf_generator import HFGenerator
    from engine.modeling import load_model, load_tokenizer

    _, run = finished
    final = run / "final"
    info = json.loads((run / "run.json").read_text())
    train_tok = load_tokenizer(info["tokenizer_path"])  # the tokenizer the run trained with
    auto_tok = AutoTokenizer.from_pretrained(str(final))
    prompt = "Question:\nCompute 3+4.\nAnswer: Let's think step by step."
    ids = train_tok(prompt, add_special_tokens=False)["input_ids"]
    assert auto_tok(prompt, add_special_tokens=False)["input_ids"] == ids
    assert auto_tok.decode(ids) == prompt and auto_tok.eos_token == train_tok.eos_token

    model = AutoModelForCausalLM.from_pretrained(str(final)).eval()
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False,
                             eos_token_id=auto_tok.eos_token_id, pad_token_id=auto_tok.pad_token_id)
    auto_text = auto_tok.decode(out[0, len(ids):], skip_special_tokens=True)
    gen = HFGenerator(load_model(str(final)), train_tok)
    ref = gen.generate([ids], 1, SamplingParams(12, temperature=0.0, end_token_ids=(train_tok.eos_token_id,)), 0)
    assert auto_text == ref.texts[0]


# -- resume ---------------------------------------------------------------------------------------

def test_resume_of_a_finished_run_says_so_and_stops(finished, tmp_path, capsys):
    _, src = finished
    run = _copy(src, tmp_path / "run")
    stamp = (run / "final" / "model.safetensors").stat().st_mtime_ns
    assert main(["run", str(run), "--resume"]) == 0
    err = capsys.readouterr().err
    assert "is finished" in err and "trainer.total_steps=N" in err
    assert "base model" not in err  # nothing was loaded
    assert (run / "final" / "model.safetensors").stat().st_mtime_ns == stamp  # not exported again


def test_resume_refuses_a_plan_changed_in_the_maths_and_names_the_keys(finished, tmp_path, capsys):
    _, src = finished
    run = _copy(src, tmp_path / "run")
    plan = json.loads((run / "plan.json").read_text())
    plan["spec"]["rollout"]["n"] = 8
    plan["spec"]["trainer"]["lr"] = 0.5
    plan["spec"]["trainer"]["total_steps"] = 4  # safe on its own
    (run / "plan.json").write_text(json.dumps(plan))
    before = (run / "metrics.jsonl").read_text()
    assert main(["run", str(run), "--resume"]) == 1
    err = capsys.readouterr().err
    assert "rollout.n: 4 -> 8" in err and "trainer.lr: 0.001 -> 0.5" in err
    assert "trainer.total_steps" not in err.split("change the maths")[1].split("start a new run")[0]
    assert (run / "metrics.jsonl").read_text() == before
    # the same through overrides on the command line
    other = _copy(src, tmp_path / "other")
    assert main(["run", str(other), "--resume", "rollout.n=2"]) == 1
    assert "rollout.n: 4 -> 2" in capsys.readouterr().err


def test_resume_extends_a_finished_run_with_more_total_steps(finished, tmp_path, capsys):
    _, src = finished
    run = _copy(src, tmp_path / "run")
    assert main(["run", str(run), "--resume", "trainer.total_steps=3"]) == 0
    err = capsys.readouterr().err
    assert "trainer.total_steps: 2 -> 3" in err
    assert "resuming from the checkpoint of step 2; step 3 to go" in err
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["complete"] and summary["steps_done"] == 3
    assert json.loads((run / "plan.json").read_text())["spec"]["trainer"]["total_steps"] == 3


def test_ctrl_c_closes_the_aim_run_and_the_resume_says_what_it_redoes(tmp_path, caplog):
    """A KeyboardInterrupt mid-run releases aim's lock; the resume needs no force (no corruption warning)."""
    from compiler import compile_spec
    from engine.runtime.loop import train

    plan = compile_spec(str(write_spec(tmp_path, steps=3, every=2)))
    run = tmp_path / "run"

    class CtrlC:  # the progress stream: Ctrl-C arrives right after step 3 is logged (checkpoint at 2)
        def write(self, text):
            if text.startswith("step 3/3"):
                raise KeyboardInterrupt

        def flush(self):
            pass

    with pytest.raises(KeyboardInterrupt):
        train(plan, run, progress_stream=CtrlC())
    assert not list((run / ".aim" / "locks").glob("*.softlock"))  # closed: no lock left behind

    messages = []
    with caplog.at_level(logging.WARNING):
        summary = train(plan, run, resume=True, log=messages.append)
    assert "Force-releasing" not in caplog.text
    assert any("resuming from the checkpoint of step 2; step 3 ran after it and will be redone" in m
               for m in messages), messages
    assert summary["complete"]
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]


# -- engine eval ------------------------------------------------------------------------------------

def test_engine_eval_takes_a_checkpoint_folder(finished, capsys):
    """The last checkpoint is the final policy: evaluated greedily, both give the same scores."""
    _, run = finished
    assert main(["eval", str(run / "checkpoints" / "step_000002"), "--base", "--json"]) == 0
    from_ckpt = json.loads(capsys.readouterr().out)
    assert main(["eval", str(run), "--base", "--json"]) == 0
    from_final = json.loads(capsys.readouterr().out)
    assert from_ckpt["model_path"].endswith("step_000002")
    assert from_ckpt["metrics"] == from_final["metrics"]
    assert main(["eval", str(run / "checkpoints" / "step_000001"), "--base", "--json"]) == 0
    assert "val/accuracy" in json.loads(capsys.readouterr().out)["metrics"]


def test_engine_eval_of_an_unfinished_run_names_its_last_checkpoint(finished, tmp_path, capsys):
    _, src = finished
    run = _copy(src, tmp_path / "run")
    shutil.rmtree(run / "final")
    assert main(["eval", str(run)]) == 2
    assert f"engine eval {run / 'checkpoints' / 'step_000002'}" in capsys.readouterr().err


def test_engine_eval_needs_only_the_generator_devices():
    """A 7B plan trains on 16 GPUs, but evaluating its model needs one generator replica."""
    from compiler import compile_spec
    from engine.runtime.resources import Found, ResourceError, check_resources, needs

    GIB = 2 ** 30

    tp1 = ["rollout.tensor_parallel=1"]  # one GPU per vLLM replica
    plan = compile_spec(str(ROOT / "specs" / "qwen2.5-7b.yaml"), tp1)
    one_gpu = Found(1, 80.0, "a test machine")
    with pytest.raises(ResourceError) as info:
        check_resources(plan, found=one_gpu)  # training: 16 GPUs and the megatron trainer
    assert "16 GPU(s)" in str(info.value)
    assert check_resources(plan, found=one_gpu, command="eval") is one_gpu
    gpus, gib = needs(plan, "eval")
    # Hand-worked for Qwen2.5-7B on one GPU (README "Memory model and placement search", vLLM): the
    # weights, 7,615,616,512 params x 2 B; profiling activations, 8192 tokens x (6*18944 + 2*(28+2*4)*128
    # + 8*3584) B plus a sampler of 12 x 152,064 B for each of 256 sequences; CUDA graphs 0.3, non-torch
    # 0.25 and vLLM's context 0.5 GiB; and the KV cache of ONE max-length sequence (1024 + 16384 tokens at
    # 57,344 B), not the 43.7 GiB a training step reserves for concurrent sequences.
    weights = 7_615_616_512 * 2 / GIB                                   # 14.185 GiB
    activations = (8192 * (6 * 18944 + 2 * (28 + 2 * 4) * 128 + 8 * 3584) + 256 * 12 * 152_064) / GIB  # 1.591
    kv_one_sequence = (1024 + 16384) * 57_344 / GIB                      # 0.930 GiB
    assert gpus == 1
    assert gib == pytest.approx(weights + activations + 0.3 + 0.25 + 0.5 + kv_one_sequence, abs=0.005)  # 17.756
    # a plan that cannot train on two GPUs still evaluates there, with its generator layout
    small = compile_spec(str(ROOT / "specs" / "qwen2.5-7b.yaml"), ["cluster.nodes=1", "cluster.gpus_per_node=2", *tp1])
    assert not small.feasible and small.rollout is not None
    two_gpus = Found(2, 80.0, "a test machine")
    with pytest.raises(ResourceError):
        check_resources(small, found=two_gpus)
    assert check_resources(small, found=two_gpus, command="eval") is two_gpus
    with pytest.raises(ResourceError) as info:  # but not on a GPU too small for the generator's weights
        check_resources(small, found=Found(1, 10.0, "a small machine"), command="eval")
    assert "for one generator replica" in str(info.value)


# -- output ---------------------------------------------------------------------------------------------

def test_run_output_has_no_library_bars_and_no_aim_hint_without_aim(tmp_path, capsys):
    spec = write_spec(tmp_path, steps=1, every=1)
    assert main(["run", str(spec), "--run-dir", str(tmp_path / "run"), "tracking.backend=none"]) == 0
    err = capsys.readouterr().err
    assert "done: reward" in err
    assert "aim up" not in err
    for noise in ("Loading weights", "Writing model shards", "FutureWarning"):
        assert noise not in err, err
