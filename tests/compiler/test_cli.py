"""`engine plan`, `engine schema` and `spec-diff` front ends: exit codes, output, no tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from compiler.cli import plan_command, schema_command, spec_json_schema
from compiler.diff import diff_specs
from compiler.diff_cli import main as spec_diff
from compiler.load import load_spec
from compiler.validate import validate

REPO = Path(__file__).resolve().parents[2]
SPECS = REPO / "specs"


# ---------------------------------------------------------------------------------------------- plan


def test_invalid_spec_exits_2_without_traceback():
    proc = subprocess.run(
        [sys.executable, "-m", "compiler.cli", "plan", "tests/compiler/broken/zero-lr.yaml", "--dry-run"],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "tests/compiler/broken/zero-lr.yaml:5: trainer.lr" in proc.stderr
    assert proc.stdout == ""


def test_unknown_override_exits_2(capsys):
    assert plan_command([str(SPECS / "qwen2.5-7b.yaml"), "--dry-run", "rollout.tensor_paralel=2"]) == 2
    err = capsys.readouterr().err
    assert "rollout.tensor_paralel=2" in err and "did you mean 'rollout.tensor_parallel'" in err


def test_usage_error_exits_2(capsys):
    assert plan_command(["--bogus-flag"]) == 2
    assert "usage:" in capsys.readouterr().err


def test_plan_feasible_exits_0(capsys):
    assert plan_command([str(SPECS / "qwen2.5-7b.yaml"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.strip()


def test_plan_json_keys(capsys):
    code = plan_command([str(SPECS / "qwen2.5-7b.yaml"), "--dry-run", "--json", "cluster.nodes=1", "rollout.tensor_parallel=2"])
    doc = json.loads(capsys.readouterr().out)
    assert code == (0 if doc["feasible"] else 1)
    for key in ("feasible", "peak_memory_gib", "reasons", "hash", "plan"):
        assert key in doc, key
    assert doc["plan"]["spec"]["cluster"]["nodes"] == 1
    assert doc["plan"]["spec"]["rollout"]["tensor_parallel"] == 2
    assert doc["hash"] == doc["plan"]["hash"]


def test_plan_infeasible_exits_1(capsys):
    code = plan_command([str(SPECS / "qwen2.5-32b.yaml"), "--json", "cluster.nodes=1", "cluster.gpus_per_node=1",
                         "rollout.tensor_parallel=auto"])
    doc = json.loads(capsys.readouterr().out)
    assert code == 1 and doc["feasible"] is False and doc["reasons"]


# -------------------------------------------------------------------------------------------- schema


def test_schema_is_json_with_extends(capsys):
    assert schema_command([]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema["type"] == "object"
    assert "extends" in schema["properties"]
    assert {"model", "data", "algorithm", "rollout", "trainer", "cluster"} <= set(schema["properties"])
    assert schema["additionalProperties"] is False
    assert "required" not in schema  # files may be partial: they inherit


def test_schema_accepts_every_shipped_spec_file():
    """Each spec file's own keys are schema keys (editor completion would not flag them)."""
    import yaml

    schema = spec_json_schema()
    defs = schema["$defs"]

    def check(node: dict, props: dict, where: str):
        for key, value in node.items():
            assert key in props, f"{where}: {key}"
            ref = props[key].get("$ref") or next((a.get("$ref") for a in props[key].get("anyOf", []) if "$ref" in a), None)
            if isinstance(value, dict) and ref:
                check(value, defs[ref.split("/")[-1]]["properties"], f"{where}.{key}")

    files = [*SPECS.glob("*.yaml"), *SPECS.glob("*/*.yaml")]
    for path in files:
        check(yaml.safe_load(path.read_text()), schema["properties"], path.name)
    try:
        import jsonschema
    except ImportError:  # not a declared dependency; the structural check above still ran
        return
    validator = jsonschema.Draft202012Validator(schema)
    for path in files:
        errors = [f"{'.'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(yaml.safe_load(path.read_text()))]
        assert not errors, f"{path.name}: {errors}"
    bad = list(validator.iter_errors({"rollout": {"n": "many", "temprature": 1}}))
    assert len(bad) == 2


def test_schema_markdown(capsys):
    assert schema_command(["--markdown"]) == 0
    text = capsys.readouterr().out
    assert "| `kl_coef` |" in text and "#### `trainer`" in text and "`extends`" in text


# ----------------------------------------------------------------------------------------- spec-diff


def test_diff_equal_exits_0(capsys):
    spec = str(SPECS / "qwen2.5-7b.yaml")
    assert spec_diff([spec, spec]) == 0
    assert "no differences" in capsys.readouterr().out


def test_diff_ablation_lists_reward_format(capsys):
    code = spec_diff([str(SPECS / "qwen2.5-7b.yaml"), str(SPECS / "ablations" / "qwen2.5-7b-strict-format.yaml")])
    out = capsys.readouterr().out
    assert code == 1
    row = next(line for line in out.splitlines() if line.startswith("reward.format"))
    assert row.split() == ["reward.format", "none", "strict"]


def test_diff_json_and_overrides(capsys):
    spec = str(SPECS / "qwen2.5-7b.yaml")
    assert spec_diff([spec, spec, "--json", "--no-plan", "--b-set", "rollout.n=16"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["equal"] is False
    assert doc["changes"] == [{"path": "rollout.n", "a": 8, "b": 16}]


def test_diff_invalid_exits_2(capsys):
    spec = str(SPECS / "qwen2.5-7b.yaml")
    assert spec_diff([spec, str(REPO / "tests/compiler/broken/zero-lr.yaml")]) == 2
    assert "trainer.lr" in capsys.readouterr().err


def test_diff_reports_plan_changes(capsys):
    code = spec_diff([str(SPECS / "qwen2.5-7b.yaml"), str(SPECS / "qwen2.5-32b.yaml"), "--json"])
    doc = json.loads(capsys.readouterr().out)
    paths = {c["path"] for c in doc["changes"]}
    assert code == 1
    assert {"model.name", "cluster.nodes", "plan.world_size", "plan.rollout.tensor_parallel"} <= paths


def test_diff_specs_compares_resolved_values(tmp_path: Path):
    """Spelling a default out, or inheriting it, is no difference."""
    explicit = tmp_path / "explicit.yaml"
    explicit.write_text(f"extends: {SPECS / 'qwen2.5-7b.yaml'}\nrollout:\n  top_k: -1\ntrainer:\n  context_parallel: 1\n")
    a, _ = validate(load_spec(SPECS / "qwen2.5-7b.yaml"))
    b, _ = validate(load_spec(explicit))
    assert diff_specs(a, b) == []
    c, _ = validate(load_spec(SPECS / "qwen2.5-7b.yaml", ["trainer.betas=[0.9,0.95]"]))
    (change,) = diff_specs(a, c)
    assert (change.path, change.a, change.b) == ("trainer.betas", [0.9, 0.999], [0.9, 0.95])
