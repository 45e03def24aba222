"""Benchmark evaluation inside `engine run`: per-benchmark metrics, pass@k, the report, early errors."""

import json

import pytest

from engine.cli import main
from tests.runtime.conftest import write_spec


def _bench_dir(folder):
    """A data_dir with tiny arithmetic benchmarks in the real gsm8k and amc23 layouts."""
    folder.mkdir()
    gsm = [{"question": f"Compute {a}+{b}.", "answer": f"{a} plus {b}\n#### {a + b}", "idx": i}
           for i, (a, b) in enumerate([(1, 2), (3, 4), (5, 1)])]
    amc = [{"problem": f"Compute {a}*{b}.", "answer": float(a * b), "id": i} for i, (a, b) in enumerate([(2, 3), (4, 2)])]
    (folder / "gsm8k.jsonl").write_text("".join(json.dumps(r) + "\n" for r in gsm) + "{broken\n")
    (folder / "amc23.jsonl").write_text("".join(json.dumps(r) + "\n" for r in amc))
    return folder


def test_run_evaluates_the_configured_benchmarks(tmp_path, capsys):
    spec = write_spec(tmp_path, steps=2, every=2, eval_every=2)
    bench = _bench_dir(tmp_path / "bench")
    run = tmp_path / "run"
    rc = main(["run", str(spec), "--run-dir", str(run), "evaluation.benchmarks=[gsm8k,amc23]",
               f"evaluation.data_dir={bench}", "evaluation.samples=4", "evaluation.samples_by_benchmark={amc23: 8}"])
    assert rc == 0, capsys.readouterr().err
    err = capsys.readouterr().err
    assert "eval (gsm8k): 3/4 prompts kept; 1 bad rows" in err
    records = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert not any(k.startswith("eval/") for k in records[0])  # evaluation.every = 2
    assert {"behaviour/reflection_ratio", "behaviour/repeat_ratio"} <= records[0].keys()  # every training step
    last = records[1]
    for name in ("gsm8k", "amc23"):
        for key in ("accuracy", "pass@2", "pass@4", "reward", "response_length", "clip_ratio", "boxed_ratio",
                    "reflection_ratio", "repeat_ratio"):
            assert f"eval/{name}/{key}" in last, (name, key)
        assert 0.0 <= last[f"eval/{name}/accuracy"] <= last[f"eval/{name}/pass@2"] <= last[f"eval/{name}/pass@4"] <= 1.0
    assert "eval/amc23/pass@8" in last and "eval/gsm8k/pass@8" not in last  # amc23 sampled 8 times, gsm8k 4
    assert last["eval/average"] == pytest.approx((last["eval/gsm8k/accuracy"] + last["eval/amc23/accuracy"]) / 2)
    run_info = json.loads((run / "run.json").read_text())
    assert run_info["data_eval"]["gsm8k"]["bad_rows"] == 1 and run_info["data_eval"]["amc23"]["kept"] == 2
    summary = json.loads((run / "summary.json").read_text())
    assert summary["eval_last"]["eval/average"] == last["eval/average"]
    from aim import Repo

    repo = Repo(str(run))
    names = {m.name for m in repo.get_run(repo.list_all_runs()[0]).metrics()}
    assert {"eval.average", "eval.gsm8k.accuracy", "eval.amc23.pass@4"} <= names


def test_missing_benchmark_files_stop_the_run_before_loading(tmp_path, capsys):
    spec = write_spec(tmp_path)
    run = tmp_path / "run"
    rc = main(["run", str(spec), "--run-dir", str(run), "evaluation.every=5", "evaluation.benchmarks=[gsm8k,aime24]",
               f"evaluation.data_dir={tmp_path / 'nowhere'}"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "evaluation.benchmarks" in err and "gsm8k.jsonl, aime24.jsonl" in err and "evaluation.benchmarks=[]" in err
    assert not run.exists()


def test_before_training_evaluates_the_base_model_once_as_step_0(tmp_path, capsys):
    spec = write_spec(tmp_path, steps=2, every=1, eval_every=2)
    bench = _bench_dir(tmp_path / "bench")
    run = tmp_path / "run"
    args = ["run", str(spec), "--run-dir", str(run), "evaluation.benchmarks=[amc23]", f"evaluation.data_dir={bench}",
            "evaluation.before_training=true"]
    assert main(args) == 0
    assert "eval step 0: accuracy val" in capsys.readouterr().err
    records = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [0, 1, 2]
    assert "eval/amc23/accuracy" in records[0] and "val/accuracy" in records[0] and "reward/mean" not in records[0]
    # greedy at step 0: a second fresh run of the same spec scores the base model identically
    run2 = tmp_path / "run2"
    assert main([*args[:2], "--run-dir", str(run2), *args[4:]]) == 0
    again = json.loads((run2 / "metrics.jsonl").read_text().splitlines()[0])
    assert again["val/accuracy"] == records[0]["val/accuracy"] and again["val/response_length"] == records[0]["val/response_length"]
    # resuming a finished run's folder does not evaluate step 0 again
    assert main(["run", str(run), "--resume"]) == 0
    steps = [json.loads(l)["step"] for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps.count(0) == 1


def test_engine_eval_scores_the_base_model_and_a_finished_run(tmp_path, capsys):
    spec = write_spec(tmp_path, steps=1, every=1)
    bench = _bench_dir(tmp_path / "bench")
    sets = ["evaluation.benchmarks=[gsm8k,amc23]", f"evaluation.data_dir={bench}", "evaluation.samples=2"]
    out = tmp_path / "base.json"
    assert main(["eval", str(spec), *sets, "--out", str(out)]) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[1].split() == ["set", "prompts", "accuracy", "pass@2", "length", "boxed"]
    assert [line.split()[:2] for line in table.splitlines()[2:5]] == [["val", "8"], ["gsm8k", "3"], ["amc23", "2"]]
    assert table.splitlines()[-1].startswith("average")
    base = json.loads(out.read_text())
    assert base["temperature"] == 0.0  # the base model is evaluated greedily (evaluation.base_temperature)
    assert base["data_eval"]["gsm8k"]["bad_rows"] == 1
    assert base["metrics"]["eval/average"] == pytest.approx(
        (base["metrics"]["eval/gsm8k/accuracy"] + base["metrics"]["eval/amc23/accuracy"]) / 2)

    # a run folder: its own plan and its final policy, sampled at evaluation.temperature
    run = tmp_path / "run"
    assert main(["run", str(spec), "--run-dir", str(run), "--quiet", *sets]) == 0
    capsys.readouterr()
    assert main(["eval", str(run), "--json"]) == 0
    trained = json.loads(capsys.readouterr().out)
    assert trained["model_path"] == str(run / "final") and trained["temperature"] == 1.0
    assert {"val/accuracy", "eval/gsm8k/pass@2", "eval/average"} <= trained["metrics"].keys()
    assert main(["eval", str(run), "evaluation.samples=4"]) == 2  # a run folder keeps its plan
    assert "overrides are not allowed" in capsys.readouterr().err


def test_engine_eval_names_every_missing_input_before_loading(tmp_path, capsys):
    spec = write_spec(tmp_path)
    rc = main(["eval", str(spec), "data.val=/no/val.parquet", "evaluation.benchmarks=[aime24]",
               f"evaluation.data_dir={tmp_path / 'none'}"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "data.val: /no/val.parquet" in err and "aime24.jsonl" in err and "data.val=null" in err
    assert "base model" not in err  # nothing was built or loaded


@pytest.mark.needs("shared-data")
def test_engine_eval_on_the_real_aime24_and_amc23_files(tmp_path, capsys):
    # the shipped benchmark files of ../shared/data, end to end: every problem templated, tokenized,
    # answered by a tiny random model and graded against its real gold answer
    from tests.conftest import shared_data

    data = shared_data() / "benchmarks"
    spec = write_spec(tmp_path)
    rc = main(["eval", str(spec), "--json", "evaluation.benchmarks=[aime24,amc23]", f"evaluation.data_dir={data}",
               "data.val=null", "data.max_prompt_length=1100", "model.architecture.max_position_embeddings=2048",
               "evaluation.batch_size=32"])
    assert rc == 0, capsys.readouterr().err
    result = json.loads(capsys.readouterr().out)
    assert result["data_eval"]["aime24"]["kept"] == 30 and result["data_eval"]["amc23"]["kept"] == 40
    m = result["metrics"]
    assert {"eval/aime24/accuracy", "eval/amc23/accuracy", "eval/average"} <= m.keys()
    assert 0.0 <= m["eval/average"] <= 1.0 and m["eval/aime24/response_length"] > 0
