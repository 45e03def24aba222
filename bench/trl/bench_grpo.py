"""GRPO step time and time-to-reward: this engine vs TRL's GRPOTrainer, same model, data and loss.

    python bench/trl/bench_grpo.py [--steps 20] [--threads 1] [--rounds 6]

Both sides train the quickstart base model (tiny Qwen2 + builtin tokenizer, built and cached by the
engine) on the same synthetic arithmetic prompts (simple template), 32 prompts x 8 rollouts per step,
32-token responses, temperature 1, PPO-clip 0.2, token-level loss over the batch (TRL "dapo" ==
engine "token_mean"), k3 KL with coefficient 1e-4 (a reference pass on both sides), group-std
advantages, one optimizer step per batch, AdamW lr 2e-4 (constant), weight decay 0.01, grad clip
1.0, no entropy bonus (TRL has none), rewards from the same `engine.reward.Grader`.

How it controls for the machine: every run is a process of its own, pinned to ``--threads`` torch
threads (OMP/MKL too, set before torch loads); the sides alternate ABBA (engine, TRL, TRL, engine,
... for ``--rounds``) so a change in the machine's load hits both; the load average is read before and
after each run and reported. The default is six short runs a side rather than two long ones: on a
shared VM the machine's speed drifts over minutes (TRL alone measured 1.04 and 1.74 s/step an hour
apart at the same load average), so the ratio is read from many alternated pairs, whose spread is
printed. Each step is timed from outside (wall and process CPU seconds): the
engine's whole ``rl_step`` call, TRL's ``on_step_begin`` -> ``on_step_end``. The per-phase breakdown
times the same calls on both sides: generate, log-probs (reference and any old-policy pass),
reward, update (forward, backward, optimizer), sync (weights into the generator) and bookkeeping
(the rest of the step: batching, advantages, metrics, rollout files). CPU seconds are the figure to
trust on a busy machine: wall seconds there measure the scheduler as much as the code. On a shared
2-core machine keep ``--threads 1``: with more threads than free cores, torch's threads wait on each
other and both sides get several times slower, by amounts that differ from run to run.

TRL is a benchmark-only dependency; install it beside the environment without touching its packages:
``pip install --target .trl --no-deps trl==1.16.* accelerate datasets multiprocess xxhash pandas``,
then run with ``PYTHONPATH=.trl``. Results: bench/results/trl_grpo.json and .md.
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

OVERRIDES = [
    "algorithm.entropy_coef=0.0",  # TRL's GRPO loss has no entropy bonus
    "tracking.backend=none",       # TRL runs with report_to=none
    "evaluation.every=0",
    "checkpoint.every=100000",
    "checkpoint.export_hf=false",
]

PHASES = ("generate", "log_probs", "reward", "update", "sync", "bookkeeping")


def first_at_least(rewards: list[float], times: list[float], target: float) -> tuple[int | None, float | None]:
    """(1-based step, cumulative seconds) of the first step whose mean reward reaches ``target``."""
    total = 0.0
    for i, (r, t) in enumerate(zip(rewards, times), 1):
        total += t
        if r >= target:
            return i, total
    return None, None


def median_steady(values: list[float]) -> float:
    """Median of steps 2+ (the first step holds one-off warm-up: allocator, lazy init)."""
    rest = values[1:] or values
    return statistics.median(rest)


class PhaseClock:
    """Wall and CPU seconds per phase and per step, from wrappers around the phase's calls."""

    def __init__(self) -> None:
        self.steps: list[dict[str, float]] = []
        self.cur: dict[str, float] | None = None
        self.depth = 0

    def begin_step(self) -> None:
        self.cur = {"wall": -time.perf_counter(), "cpu": -time.process_time()}

    def end_step(self) -> None:
        c = self.cur
        c["wall"] += time.perf_counter()
        c["cpu"] += time.process_time()
        for unit in ("wall", "cpu"):
            inner = sum(c.get(f"{p}_{unit}", 0.0) for p in PHASES if p != "bookkeeping")
            c[f"bookkeeping_{unit}"] = c[unit] - inner
        self.steps.append(c)
        self.cur = None

    def wrap(self, phase: str, fn, when=lambda: True):
        """``fn`` timed into ``phase`` (outermost call only; ``when`` decides at call time)."""
        clock = self

        def timed(*args, **kwargs):
            if clock.cur is None or clock.depth or not when():
                return fn(*args, **kwargs)
            clock.depth += 1
            w, c = time.perf_counter(), time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                clock.depth -= 1
                cur = clock.cur
                if cur is not None:
                    cur[f"{phase}_wall"] = cur.get(f"{phase}_wall", 0.0) + time.perf_counter() - w
                    cur[f"{phase}_cpu"] = cur.get(f"{phase}_cpu", 0.0) + time.process_time() - c

        return timed


# -- the two sides (each in a child process) ------------------------------------------------------

def run_engine(steps: int, threads: int, work: Path) -> dict:
    from compiler import compile_spec
    from engine.runtime import loop, roles

    clock = PhaseClock()
    R = roles.Roles
    for name, phase in (("generate", "generate"), ("log_probs", "log_probs"), ("reference_log_probs", "log_probs"),
                        ("values", "log_probs"), ("grade", "reward"), ("update", "update"),
                        ("push_weights", "sync")):
        setattr(R, name, clock.wrap(phase, getattr(R, name)))
    inner_step = loop.rl_step

    def timed_step(*a, **k):
        clock.begin_step()
        try:
            return inner_step(*a, **k)
        finally:
            clock.end_step()

    loop.rl_step = timed_step
    plan = compile_spec(str(ROOT / "specs/quickstart.yaml"),
                        OVERRIDES + [f"trainer.total_steps={steps}", f"cluster.cpu_threads={threads}"])
    run_dir = work / f"engine-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    t0 = time.perf_counter()
    loop.train(plan, run_dir, progress_stream=open(os.devnull, "w"))
    wall = time.perf_counter() - t0
    recs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    recs = [r for r in recs if "reward/mean" in r]
    return {"rewards": [r["reward/mean"] for r in recs], "response_length": [r["response_length/mean"] for r in recs],
            "steps": clock.steps, "wall_s": wall}


def run_trl(steps: int, threads: int, work: Path) -> dict:
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from compiler import compile_spec
    from engine.data.prompts import apply_template, template_text
    from engine.data.synthetic import generate_rows
    from engine.model_files import resolve_base_model
    from engine.modeling import load_model, load_tokenizer
    from engine.reward import Grader, RewardConfig

    plan = compile_spec(str(ROOT / "specs/quickstart.yaml"),
                        OVERRIDES + [f"trainer.total_steps={steps}", f"cluster.cpu_threads={threads}"])
    spec = plan.spec
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
        output_dir=str(work / "trl"), use_cpu=True, bf16=False, seed=spec.seed, report_to="none",
        per_device_train_batch_size=n_seq, gradient_accumulation_steps=1, num_generations=r.n,
        max_completion_length=spec.data.max_response_length, temperature=r.temperature, top_p=r.top_p,
        learning_rate=t.lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=t.weight_decay,
        adam_beta1=t.betas[0], adam_beta2=t.betas[1], max_grad_norm=t.grad_clip,
        beta=a.kl_coef, epsilon=a.clip_low, epsilon_high=a.clip_high, loss_type="dapo", scale_rewards="group",
        num_iterations=1, max_steps=steps, logging_steps=1, save_strategy="no", disable_dropout=True,
        dataloader_num_workers=0, disable_tqdm=True,
    )
    clock = PhaseClock()

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            clock.begin_step()

        def on_step_end(self, args, state, control, **kw):
            clock.end_step()

    trainer = GRPOTrainer(model=model, reward_funcs=[answer_reward], args=cfg, train_dataset=ds,
                          processing_class=tok, callbacks=[Timer()])
    # the same phases, timed on TRL's own methods: sampling (+ decoding), the no-grad log-prob passes
    # (reference; old policy when it needs one), the reward functions; the update is the training step
    # without its rollout part (forward, backward, clip, optimizer step); no weight sync in-process
    trainer._generate = clock.wrap("generate", trainer._generate)
    trainer._get_per_token_logps_and_entropies = clock.wrap(
        "log_probs", trainer._get_per_token_logps_and_entropies, when=lambda: not torch.is_grad_enabled())
    trainer._calculate_rewards = clock.wrap("reward", trainer._calculate_rewards)
    prepare = trainer._prepare_inputs

    def prepare_timed(*args, **kwargs):  # the rollout part of the step is not the update
        w, c = time.perf_counter(), time.process_time()
        try:
            return prepare(*args, **kwargs)
        finally:
            if clock.cur is not None:
                clock.cur["prepare_wall"] = clock.cur.get("prepare_wall", 0.0) + time.perf_counter() - w
                clock.cur["prepare_cpu"] = clock.cur.get("prepare_cpu", 0.0) + time.process_time() - c

    trainer._prepare_inputs = prepare_timed
    t0 = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - t0
    for s in clock.steps:  # update = step - rollout part; bookkeeping = rollout part - its timed phases
        for unit in ("wall", "cpu"):
            rollout = s.pop(f"prepare_{unit}", 0.0)
            s[f"update_{unit}"] = s[unit] - rollout
            s[f"bookkeeping_{unit}"] = rollout - sum(s.get(f"{p}_{unit}", 0.0) for p in ("generate", "log_probs", "reward"))
    logs = [h for h in trainer.state.log_history if "reward" in h]
    return {"rewards": [h["reward"] for h in logs], "steps": clock.steps, "wall_s": wall,
            "response_length": [h.get("completions/mean_length", float("nan")) for h in logs]}


def child(side: str, steps: int, threads: int, out: Path) -> None:
    import torch

    torch.set_num_threads(threads)
    work = Path("/tmp") / "engine-bench"
    work.mkdir(parents=True, exist_ok=True)
    load0 = os.getloadavg()
    res = (run_engine if side == "engine" else run_trl)(steps, threads, work)
    res.update(side=side, threads=torch.get_num_threads(), load_before=load0, load_after=os.getloadavg())
    out.write_text(json.dumps(res))


# -- the driver ----------------------------------------------------------------------------------

def summarize(run: dict, target: float) -> dict:
    steps = run["steps"]
    wall = [s["wall"] for s in steps]
    cpu = [s["cpu"] for s in steps]
    step, secs = first_at_least(run["rewards"], wall, target)
    phases = {p: {u: median_steady([s.get(f"{p}_{u}", 0.0) for s in steps]) for u in ("wall", "cpu")} for p in PHASES}
    return {"median_step_s": median_steady(wall), "median_step_cpu_s": median_steady(cpu),
            "mean_step_s": sum(wall) / len(wall), "phases": phases,
            "first_step_reward_ge_target": step, "seconds_to_target": secs,
            "reward_first": run["rewards"][0], "reward_last": run["rewards"][-1],
            "load_before": run["load_before"][0], "load_after": run["load_after"][0], "threads": run["threads"],
            "wall_s": run["wall_s"], "rewards": run["rewards"], "step_s": wall, "step_cpu_s": cpu,
            "response_length": run["response_length"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=6, help="runs of each side, interleaved ABBA")
    ap.add_argument("--target", type=float, default=0.8)
    ap.add_argument("--only", choices=("engine", "trl"), help="run one side only (no speed-up)")
    ap.add_argument("--child", choices=("engine", "trl"), help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    if args.child:
        child(args.child, args.steps, args.threads, args.out)
        return 0

    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads),
               TOKENIZERS_PARALLELISM="false", PYTHONPATH=os.pathsep.join(
                   [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    order: list[str] = []
    for i in range(args.rounds):  # ABBA: engine, trl, trl, engine, engine, trl, ...
        pair = ["engine", "trl"] if i % 2 == 0 else ["trl", "engine"]
        order += [s for s in pair if args.only in (None, s)]
    tmp = Path("/tmp") / "engine-bench"
    tmp.mkdir(parents=True, exist_ok=True)
    runs: dict[str, list[dict]] = {"engine": [], "trl": []}
    for k, side in enumerate(order):
        out = tmp / f"run-{os.getpid()}-{k}-{side}.json"
        print(f"[{k + 1}/{len(order)}] {side}: {args.steps} steps, {args.threads} threads, "
              f"load {os.getloadavg()[0]:.1f}", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, __file__, "--child", side, "--steps", str(args.steps),
                        "--threads", str(args.threads), "--out", str(out)], env=env, check=True,
                       stdout=subprocess.DEVNULL)  # TRL prints every step's log dict
        runs[side].append(summarize(json.loads(out.read_text()), args.target))
        out.unlink()
        r = runs[side][-1]
        print(f"    median {r['median_step_s']:.3f} s/step wall, {r['median_step_cpu_s']:.3f} CPU s; "
              f"load {r['load_before']:.1f} -> {r['load_after']:.1f}", file=sys.stderr, flush=True)

    import torch
    import transformers

    try:
        import trl
        trl_version = trl.__version__
    except ImportError:
        trl_version = None
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    loads = [x for side in runs.values() for r in side for x in (r["load_before"], r["load_after"])]
    result = {"config": {"steps": args.steps, "threads": args.threads, "rounds": args.rounds, "order": order,
                         "prompts_per_step": 32, "rollouts": 8, "max_response_tokens": 32,
                         "target_reward": args.target, "torch": torch.__version__,
                         "transformers": transformers.__version__, "trl": trl_version,
                         "machine": f"{platform.machine()} {platform.processor()}, {cpus} usable CPUs, shared",
                         "load_min": min(loads), "load_max": max(loads)}}
    sides = [s for s in ("engine", "trl") if runs[s]]
    for side in sides:
        rs = runs[side]
        pooled = lambda key: statistics.median([x for r in rs for x in r[key][1:]])  # noqa: E731
        result[side] = {"runs": rs, "median_step_s": pooled("step_s"), "median_step_cpu_s": pooled("step_cpu_s"),
                        "run_medians_s": [r["median_step_s"] for r in rs],
                        "run_medians_cpu_s": [r["median_step_cpu_s"] for r in rs],
                        "phases": {p: {u: statistics.median([r["phases"][p][u] for r in rs]) for u in ("wall", "cpu")}
                                   for p in PHASES}}
    if len(sides) == 2:
        e, t = result["engine"], result["trl"]
        result["speedup_per_step"] = t["median_step_s"] / e["median_step_s"]
        result["speedup_per_step_cpu"] = t["median_step_cpu_s"] / e["median_step_cpu_s"]
        result["speedup_run_pairs"] = [tr / er for er, tr in zip(e["run_medians_s"], t["run_medians_s"])]
    out_dir = ROOT / "bench" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    name = "trl_grpo" if len(sides) == 2 else f"trl_grpo_{sides[0]}"
    (out_dir / f"{name}.json").write_text(json.dumps(result, indent=2))
    md = markdown(result, sides, args)
    (out_dir / f"{name}.md").write_text(md)
    print(md)
    return 0


def markdown(result: dict, sides: list[str], args) -> str:
    c = result["config"]
    label = {"engine": "engine", "trl": "TRL"}
    fmt = lambda v, p=2: "not reached" if v is None else f"{v:.{p}f}"  # noqa: E731
    spread = lambda xs: f"{min(xs):.3f}-{max(xs):.3f}"  # noqa: E731
    md = [f"# GRPO on CPU: engine vs TRL GRPOTrainer ({args.steps} steps, {args.threads} thread(s), "
          f"{args.rounds} runs each, ABBA)", "",
          f"`python bench/trl/bench_grpo.py --steps {args.steps} --threads {args.threads} --rounds {args.rounds}`; "
          f"run order {', '.join(c['order'])}. Machine: {c['machine']}; load average {c['load_min']:.1f}-"
          f"{c['load_max']:.1f} during the runs; torch {c['torch']}, transformers {c['transformers']}, trl {c['trl']}.",
          "", "| | " + " | ".join(label[s] for s in sides) + " |", "|---" * (len(sides) + 1) + "|"]
    row = lambda name, f: md.append(f"| {name} | " + " | ".join(f(result[s]) for s in sides) + " |")  # noqa: E731
    row("median s/step, wall (steps 2+, all runs)", lambda r: f"{r['median_step_s']:.3f}")
    row("per-run medians, wall (spread)", lambda r: spread(r["run_medians_s"]))
    row("median CPU s/step (steps 2+, all runs)", lambda r: f"{r['median_step_cpu_s']:.3f}")
    row("per-run medians, CPU (spread)", lambda r: spread(r["run_medians_cpu_s"]))
    for p in PHASES:
        row(f"  {p}, wall / CPU s", lambda r, p=p: f"{r['phases'][p]['wall']:.3f} / {r['phases'][p]['cpu']:.3f}")
    row(f"first step with reward >= {args.target}", lambda r: " / ".join(str(x["first_step_reward_ge_target"])
                                                                       for x in r["runs"]))
    row(f"seconds to reward >= {args.target}", lambda r: " / ".join(fmt(x["seconds_to_target"], 1) for x in r["runs"]))
    row("reward first -> last", lambda r: " / ".join(f"{x['reward_first']:.3f} -> {x['reward_last']:.3f}"
                                                     for x in r["runs"]))
    row("load average before -> after", lambda r: " / ".join(f"{x['load_before']:.1f} -> {x['load_after']:.1f}"
                                                             for x in r["runs"]))
    md.append("")
    if "speedup_per_step" in result:
        md.append(f"Per-step speed-up (TRL / engine, median of steps 2+): {result['speedup_per_step']:.2f}x wall, "
                  f"{result['speedup_per_step_cpu']:.2f}x CPU; per run pair "
                  + ", ".join(f"{x:.2f}x" for x in result["speedup_run_pairs"]) + ".")
    md.append("Phases are medians over steps 2+ of each run, then over runs; bookkeeping is the step's time outside "
              "the timed phases (batching, advantages, metrics, rollout files). The machine is shared: wall "
              "seconds follow its load, CPU seconds much less.")
    return "\n".join(md) + "\n"


if __name__ == "__main__":
    sys.exit(main())
