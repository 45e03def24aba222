"""GPU check (prepared, one short run): a Qwen2.5-0.5B-shaped random-init model trained in bf16 for a few
RL updates through the Megatron trainer; measured peak memory beside the compiler's estimate, tokens/s, MFU.

    # here: the wheels travel with the working tree (the GPU machine has no index; megatron-core's wheel
    # is cp311 manylinux x86_64, so the GPU side needs Python 3.11)
    pip download --no-deps -d wheels megatron-core==0.16.1 mbridge==0.15.1
    # on the GPU machine, from the repo root (psutil only if its torch env lacks it):
    pip install --no-deps wheels/*.whl
    PYTHONPATH=$PWD timeout 500 python bench/megatron/gpu_check.py [--steps 4] [--rows 16] [--prompt 512] [--resp 1024]

    # the Transformer Engine path (TE layer spec, causal-only attention, FP8 GEMMs), where TE is installed:
    PYTHONPATH=$PWD timeout 500 python bench/megatron/gpu_check.py --fp8 tensorwise

Without Transformer Engine on that machine the local layer spec runs on the GPU (bf16, no FP8); the
output's ``layer_spec`` says which ran. ``logp_vs_hf`` is the TE-semantics check on the GPU: a batch of
rows of different prompt and response lengths (runtime layout: left-padded prompts), the trainer's
log-probs against HF transformers' on the same weights (bf16 both: agreement to about 1e-2, not 1e-5;
with the old left-padded layout under TE's causal mask the padded rows were off by whole nats).

The plan is compiled from specs/qwen2.5-0.5b.yaml (one GPU) with the same lengths and micro-batch as the
run, so the estimate (`plan.devices[0].phases_gib['train']`, GiB) and the measurement
(`torch.cuda.max_memory_allocated` over the update steps, GiB) describe the same shape. MFU counts
model FLOPs only (6 N per token for forward + backward, plus causal attention), not recompute, against
``--peak-tflops`` (H200 dense bf16: 989). Prints one JSON line (and writes it to --out if given).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--rows", type=int, default=16, help="sequences per update (one optimizer step)")
    ap.add_argument("--micro", type=int, default=4, help="sequences per forward/backward")
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--resp", type=int, default=1024)
    ap.add_argument("--recompute", default="full", choices=["none", "selective", "full"])
    ap.add_argument("--peak-tflops", type=float, default=989.0)
    ap.add_argument("--fp8", default="none", choices=["none", "delayed", "tensorwise", "blockwise"],
                    help="Transformer Engine FP8 recipe of the trainer (needs TE)")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    assert torch.cuda.is_available(), "this check needs a GPU"

    from transformers import AutoModelForCausalLM

    from compiler.api import compile_spec
    from compiler.memory import total_params
    from engine.backends.megatron.trainer import build
    from engine.backends.registry import BackendContext
    from engine.modeling import hf_config
    from engine.runtime.batch import pack_groups

    n = 8
    plan = compile_spec(str(ROOT / "specs" / "qwen2.5-0.5b.yaml"), [
        "trainer.backend=megatron", "trainer.tensor_parallel=1", "trainer.pipeline_parallel=1",
        f"trainer.micro_batch_size={args.micro}", f"trainer.log_prob_micro_batch_size={args.micro}",
        f"trainer.recompute={args.recompute}", f"data.max_prompt_length={args.prompt}",
        f"data.max_response_length={args.resp}", f"rollout.n={n}",
        f"algorithm.ppo_mini_batch_size={args.rows // n}", f"data.train_batch_size={args.rows // n}",
        "trainer.lr=1e-6", f"trainer.fp8={args.fp8}"])
    arch = plan.architecture
    dev = plan.devices[0]
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(1, arch.vocab_size, (args.prompt,), generator=g).tolist() for _ in range(args.rows // n)]
    responses = [torch.randint(1, arch.vocab_size, (args.resp,), generator=g).tolist() for _ in range(args.rows)]
    batch = pack_groups(prompts, responses, n, pad_id=0)
    batch["advantages"] = torch.randn(args.rows, 1, generator=g) * batch["response_mask"]

    from engine.backends.megatron.model import uses_te_spec

    tmp = tempfile.TemporaryDirectory()
    d = tmp.name
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(hf_config(arch), dtype=torch.bfloat16).save_pretrained(d)
    t0 = time.perf_counter()
    tr = build(BackendContext(plan=plan, model_path=d, tokenizer_path=d, device="cuda:0"))
    build_s = time.perf_counter() - t0
    logp_vs_hf = _logp_vs_hf(tr, d, arch, g)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    old = tr.compute_log_probs(batch)
    torch.cuda.synchronize()
    lp_s = time.perf_counter() - t0
    batch["old_log_probs"], batch["ref_log_probs"] = old, old
    tr.update(batch)  # warm-up
    torch.cuda.reset_peak_memory_stats()
    times, metrics = [], {}
    for _ in range(args.steps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        metrics = tr.update(batch)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() / 2**30
    tr.offload()
    after_offload = torch.cuda.memory_allocated() / 2**30
    tr.onload()

    tokens = int(batch["attention_mask"].sum())
    step = sorted(times)[len(times) // 2]
    seq = args.prompt + args.resp
    params = total_params(arch)
    attn = 6 * 2 * arch.num_layers * arch.num_heads * arch.kv_channels * seq / 2  # causal, fwd+bwd, per token
    flops = (6 * params + attn) * tokens
    out = {
        "model": "qwen2.5-0.5b shape (random init), bf16, megatron-core local/TE spec",
        "layer_spec": "transformer_engine" if uses_te_spec(tr.layout) else "local", "fp8": args.fp8,
        "seq_multiple": tr.seq_multiple, "logp_vs_hf": logp_vs_hf,
        "gpu": torch.cuda.get_device_name(0), "params": params, "rows": args.rows, "micro": args.micro,
        "seq": seq, "tokens_per_update": tokens, "recompute": args.recompute,
        "update_s_median": step, "tokens_per_s": tokens / step, "mfu": flops / step / (args.peak_tflops * 1e12),
        "log_prob_forward_s": lp_s, "build_s": build_s,
        "peak_gib_measured": peak, "plan_train_phase_gib": dev.phases_gib.get("train"),
        "plan_peak_gib": dev.peak_gib, "plan_components_gib": dev.memory_gib,
        "allocated_after_offload_gib": after_offload,
        "metrics": {k: v for k, v in metrics.items()},
    }
    line = json.dumps(out)
    print(line)
    if args.out:
        Path(args.out).write_text(line + "\n")


def _logp_vs_hf(tr, path: str, arch, g) -> dict:
    """Max / mean |log p| difference (nats) on real response tokens between the trainer and HF
    transformers, on 8 rows of 5-60 prompt and 3-40 response tokens (left-padded prompts)."""
    from engine.backends.torch_trainer import response_log_probs
    from engine.modeling import load_model
    from engine.runtime.batch import pack_groups

    prompts = [torch.randint(1, arch.vocab_size, (int(torch.randint(5, 61, (1,), generator=g)),), generator=g).tolist()
               for _ in range(8)]
    responses = [torch.randint(1, arch.vocab_size, (int(torch.randint(3, 41, (1,), generator=g)),), generator=g).tolist()
                 for _ in range(8)]
    b = pack_groups(prompts, responses, 1, pad_id=0)
    flat = {k: v for k, v in b.items() if k not in ("prompt_ids", "prompt_mask")}
    got = tr.compute_log_probs(flat)
    hf = load_model(path, dtype=torch.bfloat16, device="cuda:0").eval()
    with torch.no_grad():
        want = response_log_probs(hf, {k: v.to("cuda:0") for k, v in flat.items()}).float().cpu()
    del hf
    torch.cuda.empty_cache()
    m = flat["response_mask"].bool()
    err = (got - want).abs()[m]
    return {"max_abs": float(err.max()), "mean_abs": float(err.mean()), "tokens": int(m.sum())}


if __name__ == "__main__":
    main()
