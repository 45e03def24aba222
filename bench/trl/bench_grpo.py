"""GRPO step time and time-to-reward: this engine vs TRL's GRPOTrainer, same model, data and loss.

    python bench/trl/bench_grpo.py [--steps 40] [--threads 2]

Both sides train the quickstart base model (tiny Qwen2 + builtin tokenizer, built and cached by the
engine) on the same synthetic arithmetic prompts (simple template), 32 prompts x 8 rollouts per step,
32-token responses, temperature 1, PPO-clip 0.2, token-level loss over the batch (TRL "dapo" ==
engine "token_mean"), k3 KL with coefficient 1e-4, group-std advantages, one optimizer step per
batch, AdamW lr 2e-4 (constant), weight decay 0.01, grad clip 1.0, no entropy bonus (TRL has
none), rewards from the same `engine.reward.Grader`. Runs one after the other in this process
with the same torch thread count. Results: bench/results/trl_grpo.json and .md.

TRL is a benchmark-only dependency: pip install --no-deps trl && pip install accelerate datasets
(this keeps the installed torch).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

OVERRIDES = [
    "algorithm.entropy_coef=0.0",  # TRL's GRPO loss has no entropy bonus
    "tracking.backend=none",       # TRL runs with report_to=none
    "evaluation.every=0",
    "checkpoint.every=100000",
    "checkpoint.export_hf=false",
]


def first_at_least(rewards: list[float], times: list[float], target: float) -> tuple[int | None, float | None]:
    """(1-based step, cumulative seconds) of the first step whose mean reward reaches ``target``."""
    total = 0.0
    for i, (r, t) in enumerate(zip(rewards, times), 1):
        total += t
        if r >= target:
            return i, total
    return None, None


def run_engine(steps: int, threads: int, out_dir: Path) -> dict:
    from compiler import compile_spec
    from engine.runtime.loop import train

    plan = compile_spec(str(ROOT / "specs/quickstart.yaml"),
                        OVERRIDES + [f"trainer.total_steps={steps}", f"cluster.cpu_threads={threads}"])
    run_dir = out_dir / f"engine-{time.strftime('%Y%m%d-%H%M%S')}"
    t0 = time.perf_counter()
    train(plan, run_dir, progress_stream=sys.stderr)
    wall = time.perf_counter() - t0
    recs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {"rewards": [r["reward/mean"] for r in recs], "step_s": [r["time/step_s"] for r in recs],
            "response_length": [r["response_length/mean"] for r in recs], "wall_s": wall, "plan": plan}


def run_trl(plan, steps: int, threads: int, out_dir: Path) -> dict:
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from engine.data.prompts import apply_template, template_text
    from engine.data.synthetic import generate_rows
    from engine.modeling import load_model, load_tokenizer
    from engine.model_files import resolve_base_model
    from engine.reward import Grader, RewardConfig

    spec = plan.spec
    torch.set_num_threads(threads)
    model_path, tok_path = resolve_base_model(spec, plan.architecture)
    tok = load_tokenizer(tok_path)
    tok.padding_side = "left"
    model = load_model(model_path)
    template = template_text(spec.data.prompt_template)
    rows = generate_rows(spec.data.synthetic.size, list(spec.data.synthetic.levels), seed=spec.seed)
    ds = Dataset.from_list([{"prompt": apply_template(r["prompt"][0]["content"], template),
                             "ground_truth": r["reward_model"]["ground_truth"]} for r in rows])
    grader = Grader(RewardConfig(format="none", workers=0))

    def answer_reward(prompts, completions, ground_truth, **_):
        return [g.reward for g in grader.grade_batch(list(completions), list(ground_truth))]

    a, t, r = spec.algorithm, spec.trainer, spec.rollout
    n_seq = spec.data.train_batch_size * r.n
    cfg = GRPOConfig(
        output_dir=str(out_dir / "trl"), use_cpu=True, bf16=False, seed=spec.seed, report_to="none",
        per_device_train_batch_size=n_seq, gradient_accumulation_steps=1, num_generations=r.n,
        max_completion_length=spec.data.max_response_length, temperature=r.temperature, top_p=r.top_p,
        learning_rate=t.lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=t.weight_decay,
        adam_beta1=t.betas[0], adam_beta2=t.betas[1], max_grad_norm=t.grad_clip,
        beta=a.kl_coef, epsilon=a.clip_low, epsilon_high=a.clip_high, loss_type="dapo", scale_rewards="group",
        num_iterations=1, max_steps=steps, logging_steps=1, save_strategy="no", disable_dropout=True,
        dataloader_num_workers=0,
    )

    class Timer(TrainerCallback):
        def __init__(self):
            self.t = None
            self.step_s: list[float] = []

        def on_step_begin(self, args, state, control, **kw):
            self.t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            self.step_s.append(time.perf_counter() - self.t)

    timer = Timer()
    trainer = GRPOTrainer(model=model, reward_funcs=[answer_reward], args=cfg, train_dataset=ds,
                          processing_class=tok, callbacks=[timer])
    t0 = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - t0
    logs = [h for h in trainer.state.log_history if "reward" in h]
    return {"rewards": [h["reward"] for h in logs], "step_s": timer.step_s,
            "response_length": [h.get("completions/mean_length", float("nan")) for h in logs], "wall_s": wall}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--target", type=float, default=0.8)
    args = ap.parse_args()
    import torch
    import transformers
    import trl

    out_dir = ROOT / "bench" / "results"
    work = Path("/tmp") / "engine-bench"
    work.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)

    eng = run_engine(args.steps, args.threads, work)
    tr = run_trl(eng.pop("plan"), args.steps, args.threads, work)
    result = {"config": {"steps": args.steps, "threads": args.threads, "prompts_per_step": 32, "rollouts": 8,
                         "max_response_tokens": 32, "target_reward": args.target,
                         "torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__,
                         "machine": f"{platform.machine()} {platform.processor()} (shared, noisy)"}}
    for name, r in (("engine", eng), ("trl", tr)):
        # the first step includes one-off warm-up (allocator, lazy init): report the median of the rest
        steady = sorted(r["step_s"][1:]) or r["step_s"]
        step, secs = first_at_least(r["rewards"], r["step_s"], args.target)
        result[name] = {"median_step_s": steady[len(steady) // 2], "mean_step_s": sum(r["step_s"]) / len(r["step_s"]),
                        "first_step_reward_ge_target": step, "seconds_to_target": secs,
                        "reward_first": r["rewards"][0], "reward_last": r["rewards"][-1],
                        "wall_s": r["wall_s"], "rewards": r["rewards"], "step_s": r["step_s"],
                        "response_length": r["response_length"]}
    result["speedup_per_step"] = result["trl"]["median_step_s"] / result["engine"]["median_step_s"]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "trl_grpo.json").write_text(json.dumps(result, indent=2))
    e, t = result["engine"], result["trl"]
    fmt = lambda v, p=2: "not reached" if v is None else f"{v:.{p}f}"
    md = [f"# GRPO on CPU: engine vs TRL GRPOTrainer ({args.steps} steps, {args.threads} threads)", "",
          "| | engine | TRL |", "|---|---|---|",
          f"| median s/step (steps 2+) | {e['median_step_s']:.3f} | {t['median_step_s']:.3f} |",
          f"| mean s/step | {e['mean_step_s']:.3f} | {t['mean_step_s']:.3f} |",
          f"| first step with reward >= {args.target} | {e['first_step_reward_ge_target']} | {t['first_step_reward_ge_target']} |",
          f"| seconds to reward >= {args.target} | {fmt(e['seconds_to_target'], 1)} | {fmt(t['seconds_to_target'], 1)} |",
          f"| reward first -> last | {e['reward_first']:.3f} -> {e['reward_last']:.3f} | {t['reward_first']:.3f} -> {t['reward_last']:.3f} |",
          "", f"Per-step speed-up: {result['speedup_per_step']:.2f}x. Machine: {result['config']['machine']}; "
          f"torch {torch.__version__}, transformers {transformers.__version__}, trl {trl.__version__}.", ""]
    (out_dir / "trl_grpo.md").write_text("\n".join(md))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
