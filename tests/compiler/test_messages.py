"""Messages a new user reads first (issue 11): pipes, JSON warnings, suggestions, ranges, overrides, version."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from compiler import compile_spec, load_spec
from compiler.cli import plan_command
from compiler.diff import plan_facts
from compiler.diff_cli import main as spec_diff
from compiler.errors import SpecError

REPO = Path(__file__).resolve().parents[2]
SPECS = REPO / "specs"


@pytest.mark.parametrize("command", [
    "-m engine.cli plan specs/qwen2.5-7b.yaml --json",
    "-m compiler.diff_cli specs/qwen2.5-7b.yaml specs/ablations/qwen2.5-7b-n32.yaml --json",
    "-m engine.cli schema",
])
def test_output_cut_by_head_ends_without_a_traceback(command):
    # the reader has already gone away (as `| head` has once it has its lines): every write hits a closed pipe
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run([sys.executable, *command.split()], cwd=REPO, stdout=write_end,
                              stderr=subprocess.PIPE, text=True, timeout=600)
    finally:
        os.close(write_end)
    assert "Traceback" not in proc.stderr and "BrokenPipeError" not in proc.stderr, proc.stderr
    assert proc.returncode in (0, 1)  # the command's own exit code (spec-diff: 1, the specs differ)


def test_plan_json_holds_the_warnings(capsys):
    assert plan_command(["specs/qwen2.5-7b.yaml", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    paths = {w["path"] for w in out["warnings"]}
    assert "data.train" in paths  # the placeholder data path, also warned on stderr
    first = next(w for w in out["warnings"] if w["path"] == "data.train")
    assert first["file"].endswith("simplerl-zoo.yaml") and first["line"] > 0 and "data.train=" in first["hint"]


def test_infeasible_suggestions_are_overrides_to_type():
    plan = compile_spec(SPECS / "qwen2.5-7b.yaml", ["cluster.nodes=1"])
    assert not plan.feasible
    suggested = [r.split(" would fit")[0] for r in plan.reasons if " would fit" in r and not r.startswith("would")]
    assert suggested and "trainer.offload=true" in suggested
    for override in suggested:
        key, _, value = override.partition("=")
        assert value and " " not in key, override
        # typed as shown (the first word), each one compiles
        assert compile_spec(SPECS / "qwen2.5-7b.yaml", ["cluster.nodes=1", override.split()[0]]).feasible, override


def test_spec_diff_reports_rollouts_tokens_and_gpu_hours(capsys):
    assert spec_diff([str(SPECS / "qwen2.5-7b.yaml"), str(SPECS / "ablations" / "qwen2.5-7b-n32.yaml"), "--json"]) == 1
    changes = {c["path"]: (c["a"], c["b"]) for c in json.loads(capsys.readouterr().out)["changes"]}
    assert changes["rollout.n"] == (8, 32)
    (r8, r32), (t8, t32), (h8, h32) = (changes["plan.rollouts_per_step"], changes["plan.tokens_per_step"],
                                       changes["plan.gpu_hours"])
    assert (r8, r32) == (1024 * 8, 1024 * 32)
    assert t32 == 4 * t8 and h32 > 3.5 * h8


def test_gpu_hours_are_step_time_times_steps_times_gpus():
    plan = compile_spec(SPECS / "qwen2.5-7b.yaml")
    facts = plan_facts(plan)
    assert facts["gpu_hours"] == round(plan.estimates.step_time_s * 100 * 16 / 3600, 1)
    assert plan_facts(compile_spec(SPECS / "quickstart.yaml"))["gpu_hours"] == 0  # CPU


def test_overrides_may_be_one_string():
    plan = compile_spec(SPECS / "qwen2.5-7b.yaml", "rollout.n=16 trainer.lr=1e-6")
    assert plan.spec.rollout.n == 16 and plan.spec.trainer.lr == 1e-6
    assert load_spec(SPECS / "qwen2.5-7b.yaml", "rollout.n=4").data["rollout"]["n"] == 4
    with pytest.raises(SpecError) as info:  # one bad override is one problem, not one per character
        compile_spec(SPECS / "qwen2.5-7b.yaml", "a=b")
    assert len(info.value.problems) == 1 and info.value.problems[0].path == "a"
    with pytest.raises(TypeError, match="key=value"):
        compile_spec(SPECS / "qwen2.5-7b.yaml", [1])


def test_range_hint_names_the_allowed_range():
    with pytest.raises(SpecError) as info:
        compile_spec(SPECS / "qwen2.5-7b.yaml", ["trainer.lr=-1", "rollout.top_p=2", "rollout.n=0"])
    hints = {p.path: p.hint for p in info.value.problems}
    assert hints["trainer.lr"] == "allowed range: > 0 (float)"
    assert hints["rollout.top_p"] == "allowed range: 0 < value <= 1 (float)"
    assert hints["rollout.n"] == "allowed range: > 0 (int)"


def test_engine_version():
    proc = subprocess.run([sys.executable, "-m", "engine.cli", "--version"], cwd=REPO, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0
    name, version = proc.stdout.split()
    assert name == "engine" and version[0].isdigit()
    assert f'version = "{version}"' in (REPO / "pyproject.toml").read_text()
