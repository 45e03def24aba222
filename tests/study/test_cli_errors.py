"""One error path per command: a message naming the file, row or field, exit 1 or 2, and a Python
traceback only with ``--debug``. The cases are the ones that printed tracebacks (or destroyed their
input) on 1155b1c, run on a real tiny run folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from engine.cli import main


@pytest.fixture
def run(tiny_run, tmp_path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(tiny_run, out)
    return out


def test_data_rows_that_are_not_objects_or_not_utf8_are_counted(tmp_path):
    from engine.data.prompts import read_rows

    f = tmp_path / "train.jsonl"
    good = json.dumps({"prompt": "What is 1+1?", "reward_model": {"ground_truth": "2"}})
    f.write_bytes(b"\n".join([good.encode(), b"7", b"[1, 2]", b'{"prompt": "\xff\xfe"}', b"{bad", good.encode()]) + b"\n")
    rows = read_rows(f)
    errors = [r["__error__"] for r in rows if "__error__" in r]
    assert len(rows) == 6 and errors == ["line 2: not a JSON object", "line 3: not a JSON object",
                                         "line 4: not UTF-8 text (byte 12)", "line 5: invalid JSON (Expecting property name enclosed in double quotes)"]


def test_engine_data_counts_non_utf8_lines(tmp_path, capsys):
    rows = [json.dumps({"question": f"What is {i} + {i}?", "answer": f"so\n#### {2 * i}"}) for i in range(1, 30)]
    (tmp_path / "gsm8k.jsonl").write_bytes(("\n".join(rows) + "\n").encode() + b'{"question": "\xff"}\n')
    (tmp_path / "bench").mkdir()
    assert main(["data", "simplerl", "--gsm8k", str(tmp_path / "gsm8k.jsonl"), "--out", str(tmp_path / "out"),
                 "--benchmarks", str(tmp_path / "bench"), "--size", "0", "--val-size", "2"]) == 0
    assert "not UTF-8" in capsys.readouterr().out


def test_report_skips_a_garbled_metrics_line(run, tmp_path, capsys):
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "reward/me\n')
    assert main(["report", str(run), "--out", str(tmp_path / "report")]) == 0
    assert "metrics.jsonl: 1 line(s) skipped" in capsys.readouterr().err
    assert (tmp_path / "report" / "index.html").exists()


@pytest.mark.parametrize("command", ["report", "analyze"])
def test_a_truncated_rollouts_file_is_named(run, tmp_path, command, capsys):
    f = sorted((run / "rollouts").glob("*.parquet"))[0]
    f.write_bytes(f.read_bytes()[:200])
    argv = [command, str(run)] + (["--out", str(tmp_path / "report")] if command == "report" else [])
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert f.name in err and "not a readable parquet file" in err and "Traceback" not in err


def test_eval_names_an_unreadable_plan_json(run, capsys):
    (run / "plan.json").write_text("[1, 2")
    assert main(["eval", str(run)]) == 2
    assert "plan.json is not a plan this engine can read" in capsys.readouterr().err
    assert main(["run", str(run), "--resume"]) == 2
    assert "plan.json is not a plan this engine can read" in capsys.readouterr().err


def test_eval_names_a_truncated_final_folder(run, capsys):
    f = run / "final" / "model.safetensors"
    f.write_bytes(f.read_bytes()[:100])
    assert main(["eval", str(run)]) == 2
    err = capsys.readouterr().err
    assert f"cannot load the model in {run / 'final'}" in err and "Traceback" not in err


def test_grade_never_writes_over_its_input(tmp_path, capsys):
    f = tmp_path / "answers.jsonl"
    f.write_text("".join(json.dumps({"response": f"\\boxed{{{i}}}", "ground_truth": str(i)}) + "\n" for i in range(5)))
    before = f.read_bytes()
    assert main(["grade", str(f), "--out", str(f), "--workers", "0"]) == 2
    assert "is the input file" in capsys.readouterr().err and f.read_bytes() == before
    assert main(["grade", str(f), "--out", str(tmp_path), "--workers", "0"]) == 2
    assert "is a folder" in capsys.readouterr().err
    assert main(["grade", str(f), "--out", str(tmp_path / "out.jsonl"), "--workers", "0"]) == 0
    assert len((tmp_path / "out.jsonl").read_text().splitlines()) == 5 and not list(tmp_path.glob(".out.jsonl.tmp-*"))


def test_an_unexpected_failure_is_one_line_and_debug_shows_the_traceback(run, tmp_path, monkeypatch, capsys):
    import engine.study.report as report

    def broken(*a, **k):
        raise KeyError("reward/mean")

    monkeypatch.setattr(report, "build_report", broken)
    assert main(["report", str(run), "--out", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err
    assert "engine report: KeyError: 'reward/mean'" in err and "--debug" in err and "Traceback" not in err
    with pytest.raises(KeyError):
        main(["report", str(run), "--out", str(tmp_path / "r"), "--debug"])
