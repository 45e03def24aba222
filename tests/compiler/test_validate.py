"""Validation: every problem at once, schema hints, semantic checks, model resolution."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from compiler.catalog import CATALOG
from compiler.errors import SpecError
from compiler.load import load_spec
from compiler.resolve import architecture_from_config, resolve_architecture, tokenizer_special_tokens
from compiler.validate import spec_warnings, validate
from schemas import ModelSpec

REPO = Path(__file__).resolve().parents[2]
SPEC_7B = str(REPO / "specs" / "qwen2.5-7b.yaml")

TINY = {
    "hidden_size": 64, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2, "ffn_hidden_size": 128,
    "vocab_size": 1000, "max_position_embeddings": 32768,
}


def problems_of(source, overrides=(), **kw) -> dict[str, object]:
    with pytest.raises(SpecError) as info:
        validate(load_spec(source, overrides), **kw)
    return {p.path: p for p in info.value.problems}


def test_every_problem_at_once():
    got = problems_of(SPEC_7B, ["trainer.lr=-1", "rollout.temperature=hot", "placement=hybrid", "data.max_response_length=0"])
    assert set(got) == {"trainer.lr", "rollout.temperature", "placement", "data.max_response_length"}
    assert all(p.file.startswith("<override ") for p in got.values())


def test_unknown_key_suggests_closest_field(tmp_path: Path):
    spec = tmp_path / "s.yaml"
    spec.write_text(f"extends: {SPEC_7B}\nrollout:\n  top_pp: 0.9\n  gpu_mem: 0.5\n")
    got = problems_of(spec)
    assert got["rollout.top_pp"].hint == "did you mean 'top_p'?"
    assert got["rollout.top_pp"].line == 3
    assert "gpu_memory_utilization" in got["rollout.gpu_mem"].hint


def test_enum_error_lists_allowed_values():
    got = problems_of(SPEC_7B, ["trainer.recompute=partial"])
    assert got["trainer.recompute"].hint.startswith("allowed values: none, selective, full")


def test_union_type_error_is_one_problem():
    with pytest.raises(SpecError) as info:
        validate(load_spec(SPEC_7B, ["rollout.tensor_parallel=eight"]))
    (problem,) = info.value.problems
    assert problem.path == "rollout.tensor_parallel"
    assert "int | 'auto'" in problem.hint


def test_context_window_checked_for_4k_models():
    got = problems_of(REPO / "specs" / "qwen2.5-math-7b.yaml", ["data.max_response_length=8192"])
    p = got["data.max_response_length"]
    assert "4096" in p.message and p.hint == "max_response_length <= 3072"
    assert p.file == "<override data.max_response_length=8192>"
    # evaluation follows data.max_response_length by interpolation in the 4K specs
    assert "evaluation.max_response_length" in got


def test_4k_specs_are_valid_as_shipped():
    for name in ("qwen2.5-math-7b", "deepseek-math-7b"):
        spec, arch = validate(load_spec(REPO / "specs" / f"{name}.yaml"))
        assert spec.data.max_prompt_length + spec.data.max_response_length <= arch.max_position_embeddings
        assert spec.evaluation.max_response_length == 3072


@pytest.mark.parametrize("model,stop,ok", [
    ("qwen2.5-7b", "<|im_end|>", True),
    ("qwen2.5-7b", "<|eot_id|>", False),
    ("qwen2.5-7b", "Question:", True),  # plain text: matched as a string, always possible
    ("llama3.1-8b", "<|eot_id|>", True),
    ("llama3.1-8b", "<|im_end|>", False),
    ("mistral-7b", "</s>", True),
    ("mistral-24b", "<|endoftext|>", False),
    ("deepseek-math-7b", "</s>", False),  # DeepSeek's end token is <｜end▁of▁sentence｜>
])
def test_stop_strings_against_catalog_tokenizers(model, stop, ok):
    overrides = [f"model.name={model}", f"rollout.stop=['{stop}']"]
    if ok:
        validate(load_spec(SPEC_7B, overrides))
    else:
        assert "rollout.stop.0" in problems_of(SPEC_7B, overrides)


def test_stop_strings_against_local_tokenizer(tmp_path: Path):
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({
        "eos_token": "<|my_end|>", "added_tokens_decoder": {"5": {"content": "<|tool|>", "special": True}}}))
    model = ModelSpec(name="local", tokenizer=str(tmp_path))
    tokens = tokenizer_special_tokens(model)
    assert {"<|my_end|>", "<|tool|>"} <= tokens
    base = [f"model.tokenizer={tmp_path}", "model.name=qwen2.5-7b"]
    validate(load_spec(SPEC_7B, [*base, "model.stop=['<|my_end|>']"]))
    assert "model.stop.0" in problems_of(SPEC_7B, [*base, "model.stop=['<|im_end|>']"])


def test_unknown_model_lists_catalog():
    p = problems_of(SPEC_7B, ["model.name=gpt-5"])["model.name"]
    assert all(name in p.hint for name in CATALOG)
    assert p.file == "<override model.name=gpt-5>"


def test_random_init_with_inline_architecture_is_valid():
    spec, arch = validate(load_spec(SPEC_7B, ["model.name=tiny", "model.init=random",
                                              *(f"model.architecture.{k}={v}" for k, v in TINY.items())]))
    assert arch.hidden_size == 64 and spec.model.init == "random"


def test_resolution_order(tmp_path: Path):
    cfg = {"model_type": "qwen2", "hidden_size": 128, "num_hidden_layers": 3, "num_attention_heads": 4,
           "num_key_value_heads": 2, "intermediate_size": 256, "vocab_size": 500, "tie_word_embeddings": True,
           "max_position_embeddings": 2048, "rope_theta": 1e6, "sliding_window": 4096, "use_sliding_window": False}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    local = resolve_architecture(ModelSpec(name="qwen2.5-7b", path=str(tmp_path)))
    assert (local.hidden_size, local.num_layers, local.tied_embeddings, local.qkv_bias) == (128, 3, True, True)
    assert local.sliding_window is None and local.kv_channels == 32
    # a path that is not a local folder (e.g. a hub id) falls back to the catalog by name
    assert resolve_architecture(ModelSpec(name="qwen2.5-7b", path="Qwen/Qwen2.5-7B")) == CATALOG["qwen2.5-7b"]
    inline = resolve_architecture(ModelSpec(name="qwen2.5-7b", path=str(tmp_path), architecture=dict(TINY)))
    assert inline.hidden_size == 64


def test_config_json_mapping_for_every_catalog_family():
    mistral = architecture_from_config({
        "model_type": "mistral", "hidden_size": 5120, "num_hidden_layers": 40, "num_attention_heads": 32,
        "num_key_value_heads": 8, "head_dim": 128, "intermediate_size": 32768, "vocab_size": 131072,
        "max_position_embeddings": 32768, "rope_theta": 1e8, "sliding_window": None})
    assert mistral == CATALOG["mistral-24b"]
    llama = architecture_from_config({
        "model_type": "llama", "hidden_size": 4096, "num_hidden_layers": 30, "num_attention_heads": 32,
        "num_key_value_heads": 32, "intermediate_size": 11008, "vocab_size": 102400,
        "max_position_embeddings": 4096, "rope_theta": 10000.0, "tie_word_embeddings": False})
    assert llama == CATALOG["deepseek-math-7b"]
    with pytest.raises(SpecError, match="unsupported model_type"):
        architecture_from_config({"model_type": "gpt2"})


def test_config_json_missing_is_a_model_path_problem(tmp_path: Path):
    p = problems_of(SPEC_7B, [f"model.path={tmp_path}"])["model.path"]
    assert "config.json" in p.message and p.file.startswith("<override")


def test_data_files_checked_only_for_run(tmp_path: Path):
    missing = str(tmp_path / "nope.parquet")
    spec, _ = validate(load_spec(SPEC_7B, [f"data.train={missing}"]))  # plan: fine
    warnings = {w.path for w in spec_warnings(spec)}
    assert "data.train" in warnings
    got = problems_of(SPEC_7B, [f"data.train={missing}", "data.val=synthetic"], check_files=True)
    assert set(got) == {"data.train"}


def test_warnings_for_group_of_one():
    spec, _ = validate(load_spec(REPO / "specs" / "ablations" / "qwen2.5-7b-n1.yaml"))
    assert "rollout.n" in {w.path for w in spec_warnings(spec)}


def test_semantic_checks_wait_for_the_schema():
    got = problems_of(SPEC_7B, ["trainer.lr=0", "model.name=unknown-model"])
    assert set(got) == {"trainer.lr"}  # model resolution runs only once the schema passes


def test_unknown_override_reported_with_other_problems():
    from compiler.api import load_and_validate

    with pytest.raises(SpecError) as info:
        load_and_validate(SPEC_7B, ["data.max_response_lenght=4", "reward.format=strickt"])
    assert {p.path for p in info.value.problems} == {"data.max_response_lenght", "reward.format"}
    with pytest.raises(SpecError) as info:
        load_and_validate(SPEC_7B, ["trainer.lrr=1", "model.name=qwen2.5-math-7b"])
    assert {p.path for p in info.value.problems} == {"trainer.lrr", "data.max_response_length", "evaluation.max_response_length"}


def test_custom_template_keeps_literal_braces_as_the_runtime_renders_them():
    from schemas import render_prompt

    template = r"Q: {input} Put the answer in \boxed{}. Sets use {{}}."
    spec, _ = validate(load_spec(SPEC_7B, ["data.prompt_template=custom", f"data.custom_template='{template}'"]))
    assert render_prompt(spec.data.custom_template, "1+1?") == r"Q: 1+1? Put the answer in \boxed{}. Sets use {}."
