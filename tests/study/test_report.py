"""`engine analyze` and `engine report` on a real tiny run folder (and a second folder with a
changed spec), checking the files and the numbers in them; the page in headless Chromium when
chromium is installed."""

import json
import shutil
import subprocess

import pytest

from engine.cli import main

PNG = b"\x89PNG\r\n\x1a\n"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def two_runs(tiny_run, tmp_path_factory):
    """The tiny run, and a copy of it whose plan.json says seed 4 (a run-folder fixture: the second
    run's metrics are the first's, only its spec differs)."""
    from compiler import compile_spec
    from tests.study.conftest import OVERRIDES, tiny_spec

    root = tmp_path_factory.mktemp("report")
    a, b = root / "a", root / "b"
    shutil.copytree(tiny_run, a)
    shutil.copytree(tiny_run, b)
    shutil.rmtree(a / "analysis", ignore_errors=True)
    shutil.rmtree(b / "analysis", ignore_errors=True)
    (b / "plan.json").write_text(compile_spec(str(tiny_spec(root)), [*OVERRIDES, "seed=4"]).to_json())
    return a, b


def test_analyze_writes_ratios_per_step_and_benchmark(two_runs, capsys):
    a, _ = two_runs
    assert main(["analyze", str(a)]) == 0
    assert "aha (verification)" in capsys.readouterr().out
    res = json.loads((a / "analysis" / "analysis.json").read_text())
    rules = res["judges"]["rules"]
    assert [p["step"] for p in rules["train"]["per_step"]] == [1, 2, 3, 4]
    assert {(p["set"], p["step"]) for p in rules["eval"]["per_step"]} == {("val", 0), ("val", 2), ("val", 4)}
    assert all(p["n"] == 16 for p in rules["train"]["per_step"])
    assert set(rules["aha"]) == {"verification", "backtracking"}
    assert rules["aha"]["verification"]["found"] is False  # 4 steps: too short to test, said plainly
    assert "need at least" in rules["aha"]["verification"]["reason"]
    import pyarrow.parquet as pq

    labels = pq.read_table(str(a / "analysis" / "labels_rules.parquet")).to_pylist()
    assert len(labels) == res["responses"]["train"] + res["responses"]["eval"] == 4 * 16 + 3 * 8


def test_report_files_and_numbers(two_runs, tmp_path, capsys):
    a, b = two_runs
    out = tmp_path / "report"
    assert main(["report", str(a), str(b), "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    files = {p["file"] for p in report["plots"]}
    assert {"reward.png", "accuracy.png", "response_length.png", "clip_ratio.png", "stopped_length.png",
            "entropy.png", "kl.png", "behaviours.png", "benchmarks.png"} <= files
    for f in files:
        data = (out / f).read_bytes()
        assert data.startswith(PNG) and len(data) > 5000, f
    metrics = [json.loads(l) for l in (a / "metrics.jsonl").read_text().splitlines()]
    rewards = [m["reward/mean"] for m in metrics if "reward/mean" in m]
    reward_plot = next(p for p in report["plots"] if p["file"] == "reward.png")
    assert [s["values"] for s in reward_plot["series"].values()] == [rewards, rewards]  # both runs overlaid
    ra, rb = report["runs"]
    assert ra["steps"] == 4 and ra["reward_last"] == pytest.approx(rewards[-1])
    assert ra["spec_changes"] == [] and rb["spec_changes"] == [{"path": "seed", "a": 3, "b": 4}]
    page = (out / "index.html").read_text()
    for f in files:
        assert f"src='{f}'" in page
    assert "seed: 3 &rarr; 4" in page and "not found" in page
    assert f"{rewards[0]:.3f} &rarr; {rewards[-1]:.3f}" in page
    assert "<script" not in page.lower()  # model text is escaped, the page runs nothing
    assert {x["why"] for x in ra["examples"]} == {"first step", "last step"}


@pytest.mark.needs("chromium")
def test_report_renders_in_headless_chromium(two_runs, tmp_path):
    import matplotlib.image as mpimg

    a, b = two_runs
    out = tmp_path / "report"
    assert main(["report", str(a), str(b), "--out", str(out)]) == 0
    shot = tmp_path / "shot.png"
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={shot}",
                    "--window-size=1280,1400", (out / "index.html").as_uri()], check=True, timeout=180,
                   capture_output=True)
    img = mpimg.imread(str(shot))
    assert img.shape[0] >= 1000 and img.shape[1] >= 1200
    # plots were drawn: many distinct colours, not a blank or error page
    assert len({tuple(px) for px in (img[::8, ::8, :3] * 255).astype(int).reshape(-1, 3)}) > 50
