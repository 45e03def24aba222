"""The spec loader: inheritance chains, interpolation, overrides, cycles and line tracking."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from compiler.errors import SpecError
from compiler.load import load_spec

REPO = Path(__file__).resolve().parents[2]


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


@pytest.fixture
def chain(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """base.yaml <- mid.yaml <- sub/child.yaml, run from tmp_path."""
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "base.yaml", """
        name: base
        data:
          train: data/${data.split}.parquet
          split: hard
          max_response_length: 8192
        evaluation:
          benchmarks: [gsm8k, math500, aime24]
          max_response_length: ${data.max_response_length}
        """)
    write(tmp_path, "mid.yaml", """
        extends: base.yaml
        data:
          max_response_length: 3072
        evaluation:
          benchmarks: [gsm8k]
        """)
    return write(tmp_path, "sub/child.yaml", """
        # a child two levels down
        extends: ../mid.yaml
        name: child
        model:
          name: qwen2.5-7b
        """)


def test_chain_merges_child_last(chain: Path):
    loaded = load_spec(chain)
    assert loaded.data["name"] == "child"
    assert loaded.data["data"]["max_response_length"] == 3072
    assert loaded.data["data"]["train"] == "data/hard.parquet"
    assert loaded.data["evaluation"]["benchmarks"] == ["gsm8k"]  # lists replace, never merge
    assert "extends" not in loaded.data
    assert loaded.sources == [os.path.join("sub", "child.yaml"), "mid.yaml", "base.yaml"]


def test_interpolation_sees_the_final_values(chain: Path):
    loaded = load_spec(chain, ["data.max_response_length=1000", "data.split=easy"])
    assert loaded.data["evaluation"]["max_response_length"] == 1000
    assert loaded.data["data"]["train"] == "data/easy.parquet"


def test_line_numbers_last_file_wins(chain: Path):
    loaded = load_spec(chain)
    assert loaded.locate("name") == (os.path.join("sub", "child.yaml"), 3)
    assert loaded.locate("model.name") == (os.path.join("sub", "child.yaml"), 5)
    assert loaded.locate("data.max_response_length") == ("mid.yaml", 3)
    assert loaded.locate("data.train") == ("base.yaml", 3)
    assert loaded.locate("evaluation.max_response_length") == ("base.yaml", 8)
    # the child's one-item list hid the parent's items: index 2 falls back to the list key
    assert loaded.locate("evaluation.benchmarks.2") == ("mid.yaml", 5)


def test_locate_falls_back_to_parent_then_root(chain: Path):
    loaded = load_spec(chain)
    assert loaded.locate("model.path") == (os.path.join("sub", "child.yaml"), 4)
    assert loaded.locate("trainer.lr") == (os.path.join("sub", "child.yaml"), None)


def test_overrides_are_typed_and_located(chain: Path):
    loaded = load_spec(chain, ["rollout.tensor_parallel=2", "trainer.lr=1e-6", "model.stop=[a,b]", "data.val=null"])
    assert loaded.data["rollout"]["tensor_parallel"] == 2
    assert loaded.data["trainer"]["lr"] == pytest.approx(1e-6)
    assert loaded.data["model"]["stop"] == ["a", "b"]
    assert loaded.data["data"]["val"] is None
    assert loaded.locate("rollout.tensor_parallel") == ("<override rollout.tensor_parallel=2>", None)


def test_override_replaces_a_file_value(chain: Path):
    loaded = load_spec(chain, ["data.max_response_length=512"])
    assert loaded.data["data"]["max_response_length"] == 512
    assert loaded.locate("data.max_response_length")[0] == "<override data.max_response_length=512>"


def test_unknown_override_names_the_override(chain: Path):
    with pytest.raises(SpecError) as info:
        load_spec(chain, ["trainer.lrr=1e-6", "rollout.n=4", "bogus=1"])
    paths = {p.path: p for p in info.value.problems}
    assert set(paths) == {"trainer.lrr", "bogus"}
    assert "trainer.lrr=1e-6" in paths["trainer.lrr"].message
    assert paths["trainer.lrr"].file == "<override trainer.lrr=1e-6>"
    assert "did you mean 'trainer.lr'" in paths["trainer.lrr"].hint


def test_override_needs_key_value(chain: Path):
    with pytest.raises(SpecError, match="not key=value"):
        load_spec(chain, ["rollout.n"])


def test_override_into_a_yaml_list_is_a_problem_not_a_crash(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(REPO)
    with pytest.raises(SpecError) as info:  # the base sets trainer.betas as a YAML list
        load_spec("specs/qwen2.5-7b.yaml", ["trainer.betas.0=0.95"])
    (problem,) = info.value.problems
    assert problem.path == "trainer.betas.0"
    assert problem.file == "<override trainer.betas.0=0.95>"


def test_cycle_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "a.yaml", "extends: b.yaml\nname: a\n")
    write(tmp_path, "b.yaml", "name: b\nextends: a.yaml\n")
    with pytest.raises(SpecError) as info:
        load_spec("a.yaml")
    (problem,) = info.value.problems
    assert problem.path == "extends"
    assert "cycle" in problem.message and "a.yaml -> b.yaml -> a.yaml" in problem.message
    assert (problem.file, problem.line) == ("b.yaml", 2)


def test_diamond_is_not_a_cycle_and_later_parents_win(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "root.yaml", "name: root\nseed: 1\n")
    write(tmp_path, "left.yaml", "extends: root.yaml\nseed: 2\n")
    write(tmp_path, "right.yaml", "extends: root.yaml\ndescription: right\n")
    write(tmp_path, "top.yaml", "extends: [left.yaml, right.yaml]\nname: top\n")
    loaded = load_spec("top.yaml")
    # parents merge left to right, each with its own chain: right.yaml (via root.yaml) sets seed 1 last
    assert loaded.data == {"name": "top", "seed": 1, "description": "right"}
    assert loaded.locate("seed") == ("root.yaml", 2)


def test_missing_parent_points_at_extends(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "x.yaml", "name: x\nextends: nowhere.yaml\n")
    with pytest.raises(SpecError) as info:
        load_spec("x.yaml")
    (problem,) = info.value.problems
    assert (problem.path, problem.file, problem.line) == ("extends", "x.yaml", 2)


def test_missing_file(tmp_path: Path):
    with pytest.raises(SpecError, match="spec file not found"):
        load_spec(tmp_path / "nope.yaml")


def test_yaml_syntax_error_names_file_and_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "bad.yaml", "name: x\ndata:\n  train: [a, b\n  val: c\n")
    with pytest.raises(SpecError) as info:
        load_spec("bad.yaml")
    (problem,) = info.value.problems
    assert problem.file == "bad.yaml" and problem.line is not None and problem.line >= 3
    assert "YAML syntax error" in problem.message


def test_unresolvable_interpolation_names_every_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "i.yaml", "name: ${nope}\nseed: 1\ndata:\n  train: ${data.missing}\n  val: ???\n")
    with pytest.raises(SpecError) as info:
        load_spec("i.yaml")
    got = {(p.path, p.line) for p in info.value.problems}
    assert got == {("name", 1), ("data.train", 4), ("data.val", 5)}


def test_yaml_text_source():
    loaded = load_spec("name: inline\nseed: 3\n")
    assert loaded.data == {"name": "inline", "seed": 3}
    assert loaded.locate("seed") == ("<string>", 2)


def test_repo_spec_locations(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(REPO)
    loaded = load_spec("specs/qwen2.5-7b.yaml")
    assert loaded.sources == ["specs/qwen2.5-7b.yaml", "specs/base/simplerl-zoo.yaml"]
    file, line = loaded.locate("algorithm.clip_low")
    assert file == "specs/base/simplerl-zoo.yaml" and line is not None
    assert loaded.locate("model.name")[0] == "specs/qwen2.5-7b.yaml"
