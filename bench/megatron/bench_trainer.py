"""RL update step time on CPU: the Megatron trainer (megatron-core, TP=1, one process) vs the torch trainer.

    PYTHONPATH=$PWD python bench/megatron/bench_trainer.py [--steps 5] [--threads 2] [--rows 64] [--resp 32]

Same model (the quickstart's tiny Qwen2 shape, random init, saved to a temporary HF folder), the same
packed batch (``--rows`` sequences: 8 per prompt, prompts of 8-24 tokens, responses of ``--resp``
tokens), the same PPO/GRPO loss (engine.algorithm.losses: clip 0.2, token-mean, k3 KL 1e-4, entropy
1e-3), one AdamW step per update, micro-batch = the whole batch. The trainers take turns update by
update (fair under a shared machine's load). Reports the median over ``--steps`` updates after one
warm-up update, and the first old-log-prob forward (which includes warm-up). Not a test: numbers
depend on the machine's load. Results: bench/results/megatron_trainer.json and .md.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from schemas import Architecture  # noqa: E402

ARCH = Architecture(family="qwen2", hidden_size=64, num_layers=4, num_heads=4, num_kv_heads=2, ffn_hidden_size=192,
                    vocab_size=126, tied_embeddings=True, max_position_embeddings=128, qkv_bias=True)


def make_batch(rows: int, resp: int, seed: int = 0) -> dict[str, torch.Tensor]:
    from engine.runtime.batch import pack_groups

    g = torch.Generator().manual_seed(seed)
    n = 8
    prompts = [torch.randint(1, 126, (int(torch.randint(8, 25, (1,), generator=g)),), generator=g).tolist()
               for _ in range(rows // n)]
    responses = [torch.randint(1, 126, (resp,), generator=g).tolist() for _ in range(rows)]
    b = pack_groups(prompts, responses, n, pad_id=0)
    b["advantages"] = torch.randn(rows, 1, generator=g) * b["response_mask"]
    return {k: v for k, v in b.items() if k not in ("prompt_ids", "prompt_mask")}  # the same flat layout for both


def time_trainers(trainers: dict, batch: dict[str, torch.Tensor], steps: int) -> dict[str, dict[str, float]]:
    """Per trainer: median and min update time and the old-log-prob forward time (s). The trainers take
    turns step by step, so a shared machine's load falls on all of them alike."""
    batches, lp, times = {}, {}, {name: [] for name in trainers}
    for name, tr in trainers.items():
        t0 = time.perf_counter()
        old = tr.compute_log_probs(batch)
        lp[name] = time.perf_counter() - t0
        batches[name] = dict(batch, old_log_probs=old, ref_log_probs=old)
        tr.update(batches[name])  # warm-up
    for _ in range(steps):
        for name, tr in trainers.items():
            t0 = time.perf_counter()
            tr.update(batches[name])
            times[name].append(time.perf_counter() - t0)
    return {name: {"update_s_median": statistics.median(times[name]), "update_s_min": min(times[name]),
                   "log_probs_s": lp[name]} for name in trainers}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--resp", type=int, default=32)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from transformers import AutoModelForCausalLM

    from engine.backends.config import BatchConfig, LossConfig, OptimConfig
    from engine.backends.megatron.model import ModelLayout
    from engine.backends.megatron.trainer import MegatronTrainer
    from engine.backends.torch_trainer import TorchTrainer
    from engine.modeling import hf_config, load_model

    optim = OptimConfig(lr=2e-4, weight_decay=0.01, grad_clip=1.0)
    loss = LossConfig(clip_low=0.2, clip_high=0.2, loss_agg="token_mean", kl_coef=1e-4, entropy_coef=1e-3)
    sizes = BatchConfig(mini_batch=args.rows, micro_batch=args.rows, log_prob_micro_batch=args.rows)
    batch = make_batch(args.rows, args.resp)
    results = {}
    with tempfile.TemporaryDirectory() as d:
        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(hf_config(ARCH), dtype=torch.float32).save_pretrained(d)
        trainers = {"torch": TorchTrainer(load_model(d), optim, loss, sizes)}
        trainers["megatron (TP=1, recompute=none)"] = MegatronTrainer(ARCH, d, ModelLayout(recompute="none"), optim,
                                                                      loss, sizes)
        results = time_trainers(trainers, batch, args.steps)
    tokens = int(batch["attention_mask"].sum())
    meta = {"rows": args.rows, "response_tokens": args.resp, "tokens_per_batch": tokens, "threads": args.threads,
            "steps": args.steps, "torch": torch.__version__, "python": platform.python_version(),
            "machine": platform.machine(), "command": " ".join(["python"] + sys.argv)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "megatron_trainer.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    lines = ["| trainer | update (s, median) | update (s, min) | first log-prob forward (s) |", "|---|---|---|---|"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['update_s_median']:.3f} | {r['update_s_min']:.3f} | {r['log_probs_s']:.3f} |")
    md = "\n".join(lines) + f"\n\n{tokens} tokens per batch, {args.threads} threads, `{meta['command']}`\n"
    (out / "megatron_trainer.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
