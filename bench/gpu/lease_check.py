"""GPU check for a lease (prepared; one run, under 10 minutes on one H200): the runtime's own device
string, memory of the trainer's calls beside the compiler's figures for the same shapes, the caching
allocator's headroom with and without releasing it, and one update after offload/onload.

The plan is compiled from specs/qwen2.5-0.5b.yaml (the one-GPU paper plan) with the paper's lengths
(prompt + response = 9216 tokens) and a log-prob micro-batch of ``--micro``, so the compiler's figures
and the measurement describe the same shape. Like for like: each figure counts only what the script
allocates for that call (``torch.cuda.max_memory_allocated`` during the call minus what was allocated
before it), against the memory model's function for that term (`compiler.memory.logits_bytes`,
`stage_activation_bytes`).

    # here: the wheels the GPU image lacks (its image: Python 3.12, torch, transformers)
    bash bench/gpu/fetch_wheels.sh            # -> wheels/ (about 6 MB, cp312, no torch)
    # on the GPU machine, from the repo root:
    pip install --no-deps wheels/*.whl
    PYTHONPATH=$PWD timeout 540 python bench/gpu/lease_check.py --out $OUT/lease_check.json

Prints one JSON object. Without Transformer Engine there, the local layer spec runs on the GPU (bf16).
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

GIB = 2.0 ** 30


def _delta_peak(fn, *args, **kwargs):
    """(result, GiB allocated at the call's peak beyond what was allocated before it)."""
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    out = fn(*args, **kwargs)
    torch.cuda.synchronize()
    return out, (torch.cuda.max_memory_allocated() - before) / GIB


def _headroom() -> float:
    """Reserved minus allocated (GiB): what the caching allocator holds that vLLM could not map."""
    return (torch.cuda.memory_reserved() - torch.cuda.memory_allocated()) / GIB


def _weights(tr) -> dict[str, torch.Tensor]:
    return {n: t.detach().float().cpu() for bucket in tr.weight_stream(512 << 20) for n, t in bucket}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompt", type=int, default=1024)
    ap.add_argument("--resp", type=int, default=8192)
    ap.add_argument("--micro", type=int, default=1, help="log-prob and training micro-batch (sequences)")
    ap.add_argument("--rows", type=int, default=2, help="sequences per call")
    ap.add_argument("--out", default="")
    ap.add_argument("--dry-run", action="store_true", help="compile and print the model's figures; no GPU")
    args = ap.parse_args()
    assert args.dry_run or torch.cuda.is_available(), "this check needs a GPU"

    from transformers import AutoModelForCausalLM

    from compiler import memory
    from compiler.api import compile_spec
    from engine.backends.registry import BackendContext, build_trainer
    from engine.modeling import hf_config
    from engine.runtime.batch import pack_groups
    from engine.runtime.roles import worker_device

    n = args.rows
    plan = compile_spec(str(ROOT / "specs" / "qwen2.5-0.5b.yaml"), [
        f"trainer.micro_batch_size={args.micro}", f"trainer.log_prob_micro_batch_size={args.micro}",
        f"data.max_prompt_length={args.prompt}", f"data.max_response_length={args.resp}",
        f"rollout.n={n}", "algorithm.ppo_mini_batch_size=1", "data.train_batch_size=1"])
    arch, c = plan.architecture, plan.trainer
    device = worker_device(plan)  # what every GPU worker gets: "cuda:0"
    seq = args.prompt + args.resp
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(1, arch.vocab_size, (args.prompt,), generator=g).tolist()]
    responses = [torch.randint(1, arch.vocab_size, (args.resp,), generator=g).tolist() for _ in range(n)]
    batch = pack_groups(prompts, responses, n, pad_id=0)
    batch["advantages"] = torch.randn(n, 1, generator=g) * batch["response_mask"]

    out: dict = {"device_string": device, "seq": seq, "micro": args.micro, "rows": n, "backend": c.backend}
    out["log_probs_model_gib"] = memory.logits_bytes(arch, seq, args.micro, c.tensor_parallel, grad=False) / GIB
    out["update_model_gib"] = (memory.stage_activation_bytes(
        arch, seq, args.micro, c.tensor_parallel, c.pipeline_parallel, recompute=c.recompute,
        sequence_parallel=c.sequence_parallel) + memory.logits_bytes(arch, seq, args.micro, c.tensor_parallel)) / GIB
    if args.dry_run:
        print(json.dumps(out))
        return
    out["gpu"] = torch.cuda.get_device_name(0)
    with tempfile.TemporaryDirectory() as d:
        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(hf_config(arch), dtype=torch.bfloat16).save_pretrained(d)
        t0 = time.perf_counter()
        tr = build_trainer(BackendContext(plan=plan, model_path=d, tokenizer_path=d, device=device))
        out["build_s"] = time.perf_counter() - t0

    old, out["log_probs_measured_gib"] = _delta_peak(tr.compute_log_probs, batch)
    out["headroom_after_log_probs_gib"] = _headroom()
    tr.release_memory()
    out["headroom_after_release_gib"] = _headroom()

    batch["old_log_probs"], batch["ref_log_probs"] = old, old
    tr.update(batch)  # warm-up: the optimizer state exists after the first step
    _, out["update_measured_gib"] = _delta_peak(tr.update, batch)
    out["headroom_after_update_gib"] = _headroom()
    tr.release_memory()
    out["headroom_after_update_release_gib"] = _headroom()

    # one update after offload/onload against the same update from the same state never offloaded
    with tempfile.TemporaryDirectory() as ck:
        tr.save_checkpoint(ck)
        m_b = tr.update(batch)
        wb = _weights(tr)
        tr.load_checkpoint(ck)
        resident = torch.cuda.memory_allocated() / GIB
        tr.offload()
        out["allocated_offloaded_gib"], out["allocated_resident_gib"] = torch.cuda.memory_allocated() / GIB, resident
        tr.onload()
        m_a = tr.update(batch)
        wa = _weights(tr)
    out["onload_metric_diffs"] = {k: abs(m_a[k] - m_b[k]) for k in m_a if k in m_b and "time" not in k}
    out["onload_max_weight_diff"] = max((wa[k] - wb[k]).abs().max().item() for k in wa)
    out["ok"] = (out["log_probs_measured_gib"] <= out["log_probs_model_gib"] * 1.05
                 and out["update_measured_gib"] <= out["update_model_gib"] * 1.05
                 and out["onload_max_weight_diff"] == 0.0)
    line = json.dumps(out)
    print(line)
    if args.out:
        Path(args.out).write_text(line + "\n")


if __name__ == "__main__":
    main()
