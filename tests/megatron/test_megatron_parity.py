"""The Megatron trainer against HF transformers and the torch trainer: real megatron-core over gloo.

One pair of spawned processes runs every check (`mcore_checks.run_all`); the tests below read its
results. Models: a tiny Qwen2 (q/k/v bias, tied embeddings) and a Llama-family model with an explicit
head_dim (24) unequal to hidden / heads (16) and an untied LM head; vocabulary 126, padded by
Megatron to 128 (TP=1) or 256 (TP=2), so padded-vocabulary masking is exercised.
"""

from __future__ import annotations

import copy
import os
import sys

import pytest
import torch

pytest.importorskip("megatron.core")
pytest.importorskip("mbridge")

sys.path.insert(0, os.path.dirname(__file__))  # the helpers spawned ranks import by name
import mcore_checks as mc  # noqa: E402
from mcore_spawn import run_ranks  # noqa: E402

pytestmark = pytest.mark.slow

LAYOUTS = [("qwen2", 1, 1), ("qwen2", 2, 1), ("qwen2", 1, 2), ("llama_hd", 1, 1), ("llama_hd", 2, 1), ("llama_hd", 1, 2)]
# TP=2; PP=2; DP=2 (token-mean, and per-sequence means: the normaliser is then the global sequence count)
UPDATE_LAYOUTS = [(2, 1, "token_mean"), (1, 2, "token_mean"), (1, 1, "token_mean"), (1, 1, "seq_mean_token_mean")]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """The HF models on disk and the inputs every check shares."""
    root = str(tmp_path_factory.mktemp("mcore"))
    for name, arch in mc.ARCHS.items():
        mc.save_hf_model(arch, os.path.join(root, name))
    batch = mc.make_batch(mc.QWEN2, seed=0)
    # the update batch: old log-probs off the current ones (ratios != 1, so clipping is active), a reference,
    # and a generator's log-probs near the current ones (read by an on-policy update only)
    hf = _hf(root, "qwen2")
    from engine.backends.torch_trainer import response_log_probs

    flat = _flat(batch)
    with torch.no_grad():
        cur = response_log_probs(hf, flat)
    g = torch.Generator().manual_seed(5)
    ub = dict(flat)
    ub["old_log_probs"] = (cur + 0.3 * torch.randn(cur.shape, generator=g)) * flat["response_mask"]
    ub["ref_log_probs"] = (cur - 0.2 * torch.randn(cur.shape, generator=g).abs()) * flat["response_mask"]
    ub["rollout_log_probs"] = (cur + 0.05 * torch.randn(cur.shape, generator=g)) * flat["response_mask"]
    inputs = {"batch": batch, "update_batch": ub, "vp_logits": torch.randn(3, 4, 12, generator=g) * 3,
              "vp_tokens": torch.randint(0, 10, (3, 4), generator=g)}
    return {"root": root, "inputs": inputs}


@pytest.fixture(scope="module")
def run(models):
    results = run_ranks(mc.run_all, 2, models["root"], LAYOUTS, UPDATE_LAYOUTS, models["inputs"])
    return {**models, "ranks": results}


def _hf(root, name):
    from engine.modeling import load_model

    return load_model(os.path.join(root, name)).eval()


def _flat(batch):
    return {k: v for k, v in batch.items() if k not in ("prompt_ids", "prompt_mask")}


@pytest.mark.parametrize("name,tp,pp", LAYOUTS)
def test_megatron_logits_equal_hf(run, name, tp, pp):
    flat = _flat(run["inputs"]["batch"])
    with torch.no_grad():
        ref = _hf(run["root"], name)(input_ids=flat["input_ids"], attention_mask=flat["attention_mask"],
                                     position_ids=flat["position_ids"]).logits
    real = flat["attention_mask"].bool()
    for r in run["ranks"]:  # every rank returns the same full-vocabulary logits
        got = r[f"logits_{name}_tp{tp}_pp{pp}"]
        assert got.shape == ref.shape
        assert (got[real] - ref[real]).abs().max() < 1e-5


@pytest.mark.parametrize("name,tp,pp", LAYOUTS)
def test_log_probs_and_entropy_equal_full_vocabulary(run, name, tp, pp):
    from engine.algorithm.losses import entropy_from_logits
    from engine.backends.torch_trainer import response_logits, token_log_probs

    flat = _flat(run["inputs"]["batch"])
    with torch.no_grad():
        logits = response_logits(_hf(run["root"], name), flat)
    m = flat["response_mask"].bool()
    for r in run["ranks"]:
        key = f"{name}_tp{tp}_pp{pp}"
        assert (r[f"logp_{key}"] - token_log_probs(logits, flat["responses"]))[m].abs().max() < 1e-5
        assert (r[f"entropy_{key}"] - entropy_from_logits(logits))[m].abs().max() < 1e-5


@pytest.mark.parametrize("name,tp,pp", LAYOUTS)
def test_hf_megatron_hf_round_trip_is_bit_exact(run, name, tp, pp):
    key = f"{name}_tp{tp}_pp{pp}"
    r = run["ranks"][0]
    assert r[f"stream_names_{key}"] == r[f"hf_names_{key}"]  # every HF tensor, once (manifest checked in-rank)
    assert all(r[f"roundtrip_{key}"].values()), [n for n, ok in r[f"roundtrip_{key}"].items() if not ok]


@pytest.mark.parametrize("name", ["qwen2", "llama_hd"])
def test_bridge_mapping_matches_the_hand_written_one(run, name):
    r = run["ranks"][0]
    key = f"{name}_tp1_pp1"
    assert sorted(r[f"hand_mapping_{key}"]) == r[f"megatron_names_{key}"]
    assert all(r[f"hand_mapping_{key}"].values()), [k for k, ok in r[f"hand_mapping_{key}"].items() if not ok]


@pytest.mark.parametrize("name", ["qwen2", "llama_hd"])
def test_export_hf_folder_loads_in_transformers(run, name):
    from engine.modeling import load_model

    flat = _flat(run["inputs"]["batch"])
    exported = load_model(os.path.join(run["root"], f"export_{name}_tp2_pp1")).eval()
    with torch.no_grad():
        a = exported(input_ids=flat["input_ids"]).logits
        b = _hf(run["root"], name)(input_ids=flat["input_ids"]).logits
    assert torch.equal(a, b)


def test_vocab_parallel_log_probs_and_entropy_at_tp2(run):
    z = run["inputs"]["vp_logits"].clone().requires_grad_(True)
    tokens = run["inputs"]["vp_tokens"]
    logp = torch.log_softmax(z[..., :10] / 0.7, dim=-1)  # 10 real ids, 2 padding
    lp = logp.gather(-1, tokens[..., None]).squeeze(-1)
    ent = -(logp.exp() * logp).sum(-1)
    (lp.sum() + 0.5 * ent.sum()).backward()
    got_grad = torch.cat([r["vp"]["grad"] for r in run["ranks"]], dim=-1)
    for r in run["ranks"]:
        assert (r["vp"]["logp"] - lp.detach()).abs().max() < 1e-5
        assert (r["vp"]["entropy"] - ent.detach()).abs().max() < 1e-5
    assert (got_grad - z.grad).abs().max() < 1e-5
    assert torch.count_nonzero(got_grad[..., 10:]) == 0  # padding ids get no gradient


def _torch_update(run, agg, temperature=1.0, on_policy=False):
    from engine.backends.config import BatchConfig
    from engine.backends.torch_trainer import TorchTrainer

    optim, loss = mc.optim_loss(agg, temperature)
    model = copy.deepcopy(_hf(run["root"], "qwen2"))
    ub = dict(run["inputs"]["update_batch"])
    if on_policy:
        ub.pop("old_log_probs")
    rows = ub["responses"].shape[0]
    tr = TorchTrainer(model, optim, loss, BatchConfig(mini_batch=rows, micro_batch=2, log_prob_micro_batch=3))
    before = tr.compute_log_probs(ub, with_entropy=True)
    metrics = tr.update(ub)
    return metrics, {n: p.detach() for n, p in model.state_dict().items()}, before


@pytest.fixture(scope="module")
def torch_updates(run):
    return {agg: _torch_update(run, agg) for agg in {a for _, _, a in UPDATE_LAYOUTS}}


@pytest.mark.parametrize("tp,pp,dp,agg", [(2, 1, 1, "token_mean"), (1, 2, 1, "token_mean"), (1, 1, 2, "token_mean"),
                                          (1, 1, 2, "seq_mean_token_mean")])
def test_rl_update_equals_the_torch_trainer(run, torch_updates, tp, pp, dp, agg):
    want, want_w, _ = torch_updates[agg]
    for r in run["ranks"]:
        got = r[f"update_tp{tp}_pp{pp}_dp{dp}_{agg}"]
        for k in ("trainer/pg_loss", "trainer/grad_norm", "trainer/entropy", "trainer/kl", "trainer/pg_clipfrac",
                  "trainer/ppo_kl", "trainer/lr", "trainer/skipped_steps"):
            assert abs(got["metrics"][k] - want[k]) <= 1e-5 * max(1.0, abs(want[k])), (k, got["metrics"][k], want[k])
        assert want["trainer/pg_clipfrac"] > 0  # the clip is exercised
        assert sorted(got["weights"]) == sorted(n for n in want_w if n != "lm_head.weight")
        # Adam's first step moves each weight by about lr * g / (|g| + eps): where |g| is near eps, float
        # rounding of g (which differs between CPUs' SIMD paths) moves that weight by up to lr = 1e-3. A
        # tenth of a step bounds the rounding; a wrong sign or a missing term moves weights by a whole step.
        worst = max((got["weights"][n] - want_w[n]).abs().max().item() for n in got["weights"])
        assert worst < 1e-4, worst
        close = sum(int(((got["weights"][n] - want_w[n]).abs() < 1e-5).sum()) for n in got["weights"])
        total = sum(got["weights"][n].numel() for n in got["weights"])
        assert close >= 0.999 * total, (close, total)


# the objective at a rollout temperature != 1 with the new aggregation modes: DP 2 (weights and counts
# summed over ranks), TP 2 (vocab-parallel log-probs and entropy at the temperature), and an on-policy
# update (no old log-probs: the trainer reports the rollout/* gap from its own forward pass)
TEMPERATURE = 0.7
OBJECTIVE_LAYOUTS = [(1, 1, "micro_batch_token_mean", False), (1, 1, "seq_mean_token_sum_norm", False),
                     (2, 1, "micro_batch_token_mean", False), (1, 1, "token_mean", True)]


@pytest.fixture(scope="module")
def objective_run(models):
    inputs = {**models["inputs"], "temperature": TEMPERATURE}
    return {**models, "ranks": run_ranks(mc.run_objective, 2, models["root"], OBJECTIVE_LAYOUTS, inputs)}


@pytest.mark.parametrize("tp,pp,agg,on_policy", OBJECTIVE_LAYOUTS)
def test_objective_at_a_temperature_equals_the_torch_trainer(objective_run, tp, pp, agg, on_policy):
    want, want_w, (want_lp, want_ent) = _torch_update(objective_run, agg, TEMPERATURE, on_policy)
    m = objective_run["inputs"]["update_batch"]["response_mask"].bool()
    keys = ["trainer/pg_loss", "trainer/grad_norm", "trainer/entropy", "trainer/kl", "trainer/pg_clipfrac",
            "trainer/ppo_kl", "trainer/skipped_steps"]
    if on_policy:
        keys += ["rollout/token_mult_prob_error", "rollout/kl", "rollout/max_abs_diff"]
        assert want["rollout/token_mult_prob_error"] > 1.0 and want["trainer/pg_clipfrac"] == 0
    else:
        assert want["trainer/pg_clipfrac"] > 0 and "rollout/token_mult_prob_error" not in want
    for r in objective_run["ranks"]:
        got = r[f"tp{tp}_pp{pp}_dp{2 // (tp * pp)}_{agg}" + ("_on" if on_policy else "")]
        assert (got["logp"] - want_lp)[m].abs().max() < 1e-5 and (got["entropy"] - want_ent)[m].abs().max() < 1e-5
        for k in keys:
            assert abs(got["metrics"][k] - want[k]) <= 1e-5 * max(1.0, abs(want[k])), (k, got["metrics"][k], want[k])
        worst = max((got["weights"][n] - want_w[n]).abs().max().item() for n in got["weights"])
        assert worst < 1e-4, worst  # Adam's rounding on near-zero gradients, as in the update test above


def test_checkpoint_load_gives_the_identical_next_update(run):
    for r in run["ranks"]:
        res = r["resume_tp2_pp1_dp1_token_mean"]
        assert res["m2"] == res["m2b"]
        assert res["same_weights"]
        assert any(f.endswith(".distcp") for f in res["files"])  # a sharded (per-rank) checkpoint
