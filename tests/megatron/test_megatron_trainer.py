"""The Megatron trainer built from a compiled plan, in one process with no caller set-up (the quickstart's
case): the registry builder, the Trainer protocol, learning on a fixed batch, the weight stream's
manifest, and an HF export whose log-probs are the trainer's. Plus layout refusals (no processes)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.needs("megatron")  # fails, not skips, when missing (tests/conftest.py)

sys.path.insert(0, os.path.dirname(__file__))  # the helpers spawned ranks import by name
from mcore_spawn import run_ranks  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def test_padded_vocabulary_hand_checked():
    from engine.backends.megatron.model import padded_vocab_size

    assert padded_vocab_size(126, 1) == 128
    assert padded_vocab_size(126, 2) == 256
    assert padded_vocab_size(151936, 1) == 151936  # Qwen2.5: 1187 x 128
    assert padded_vocab_size(151936, 2) == 152064  # 594 x 256


def test_cpu_refuses_fp8_and_sequence_parallel_without_tp_with_the_reason():
    from engine.backends.megatron.model import MegatronModelError, ModelLayout, check_layout

    with pytest.raises(MegatronModelError, match="fp8.*Transformer Engine.*GPU"):
        check_layout(ModelLayout(fp8="tensorwise"))
    with pytest.raises(MegatronModelError, match="tensor_parallel > 1"):
        check_layout(ModelLayout(tensor_parallel=1, sequence_parallel=True))
    check_layout(ModelLayout(tensor_parallel=2, pipeline_parallel=2, recompute="selective"))
    check_layout(ModelLayout(tensor_parallel=2, sequence_parallel=True))  # SP runs on CPU (local spec, SP norm)


def test_cpu_shim_is_scoped_to_its_context():
    from engine.backends.megatron.cpu import cpu_compat

    before = torch.cuda.current_device
    with cpu_compat():
        t = torch.zeros(2, device="cuda")
        assert t.device.type == "cpu" and t.type() == "torch.cuda.FloatTensor"
        assert t.cuda() is t
    assert torch.cuda.current_device is before
    assert torch.zeros(1).type() == "torch.FloatTensor"


def _plan():
    from compiler.api import compile_spec

    # the quickstart spec, small batch; the compiler plans CPU runs for backend torch today, and the
    # Megatron builder reads only the layout fields, which it gets the same from either
    return compile_spec(str(ROOT / "specs" / "quickstart.yaml"), [
        "trainer.micro_batch_size=4", "trainer.log_prob_micro_batch_size=3", "algorithm.ppo_mini_batch_size=2",
        "rollout.n=4", "trainer.lr=0.01", "algorithm.kl_coef=0.0"])


def single_process(rank: int, world: int, plan_json: str, model_path: str, out_dir: str) -> dict:
    from compiler.plan import Plan
    from engine.backends.base import Trainer
    from engine.backends.manifest import check_manifest
    from engine.backends.registry import BackendContext, build_trainer
    from engine.runtime.batch import pack_groups

    plan = Plan.from_json(plan_json)
    plan = plan.model_copy(update={"trainer": plan.trainer.model_copy(update={"backend": "megatron"})})
    tr = build_trainer(BackendContext(plan=plan, model_path=model_path, tokenizer_path=model_path))
    assert torch.distributed.get_world_size() == 1  # the trainer's own one-rank group
    prompts = [[5, 6, 7, 8], [9, 10]]
    responses = [[20, 21, 22], [23], [24, 25], [26, 27, 28, 29], [30], [31, 32], [33], [34, 35, 36]]
    batch = pack_groups(prompts, responses, 4, pad_id=0)
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0, -1.0, 1.0, -1.0, 1.0])  # zero-mean per group, as GRPO gives
    batch["advantages"] = adv[:, None] * batch["response_mask"]
    m = batch["response_mask"]
    before = tr.compute_log_probs(batch)
    metrics = []
    for _ in range(6):
        batch["old_log_probs"] = tr.compute_log_probs(batch)
        metrics.append(tr.update(batch))
    after, entropy = tr.compute_log_probs(batch, with_entropy=True)
    names = [n for b in tr.weight_stream(bucket_bytes=4096) for n, _ in b]
    check_manifest(tr.weight_names(), names)
    export = os.path.join(out_dir, "export")
    tr.export_hf(export)
    seq_gain = ((after - before) * m).sum(-1) / m.sum(-1)
    return {"is_trainer": isinstance(tr, Trainer), "gain": seq_gain, "metrics": metrics, "after": after,
            "entropy": entropy, "export": export, "batch": batch, "buckets": len(names)}


@pytest.mark.slow
def test_single_process_trainer_from_the_plan_learns_and_exports(tmp_path):
    from transformers import AutoModelForCausalLM

    from engine.backends.torch_trainer import response_log_probs
    from engine.modeling import hf_config, load_model

    plan = _plan()
    model_path = str(tmp_path / "base")
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(hf_config(plan.architecture), dtype=torch.float32).save_pretrained(model_path)
    (r,) = run_ranks(single_process, 1, plan.to_json(), model_path, str(tmp_path), init_group=False)
    assert r["is_trainer"]
    # positive-advantage responses became more likely, the others less likely
    pos = torch.tensor([1, 0, 1, 0, 0, 1, 0, 1]).bool()
    gain = r["gain"]
    assert gain[pos].min() > 0 > gain[~pos].max(), gain
    for m in r["metrics"]:
        assert m["trainer/skipped_steps"] == 0 and m["trainer/grad_norm"] > 0 and m["trainer/lr"] == 0.01
    # the exported HF folder is the trained policy: its log-probs are the trainer's
    exported = load_model(r["export"]).eval()
    flat = {k: v for k, v in r["batch"].items() if k not in ("prompt_ids", "prompt_mask")}
    with torch.no_grad():
        lp = response_log_probs(exported, flat)
    mask = flat["response_mask"].bool()
    assert (lp - r["after"])[mask].abs().max() < 1e-5


def test_mistral_window_reaches_the_megatron_config():
    from compiler.catalog import CATALOG
    from engine.backends.megatron.model import ModelLayout, transformer_config

    assert transformer_config(CATALOG["mistral-7b"], ModelLayout()).window_size == (4095, 0)
    assert transformer_config(CATALOG["qwen2.5-7b"], ModelLayout()).window_size is None
