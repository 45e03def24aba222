"""The quickstart RL run with the Megatron trainer (one CPU process), before the run loop is wired to it.

    PYTHONPATH=$PWD python bench/megatron/learn_quickstart.py [--steps 40] [--run-dir /tmp/mq]

The real `engine.runtime.loop.train` on specs/quickstart.yaml (base model, data, generator, reward,
evaluation), except that the trainer role is `MegatronTrainer` (built by the registry builder from the
plan) behind a thin adapter: it exposes no shared HF module, so the loop syncs weights to the HF
generator through `weights()`, which is the trainer's HF weight stream. The compiler refuses
`trainer.backend=megatron` on CPU today, so the plan is compiled for `torch` and its trainer backend
switched; the layout fields the builder reads are the same. Checkpoints and HF export are off (the
loop's checkpoint format is the torch trainer's state dict; the final one it writes is empty here). Prints the last five steps' mean reward.
Not a test; a demonstration until the run loop selects trainers through the registry.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


class MegatronActor:
    """The loop's trainer-role interface over `MegatronTrainer` (single process)."""

    model = None  # no shared module: the loop syncs weights through `weights()`

    def __init__(self, setup) -> None:
        import torch

        from engine.backends.registry import BackendContext, build_trainer

        if setup.threads:
            torch.set_num_threads(setup.threads)
        plan = setup.plan()
        plan = plan.model_copy(update={"trainer": plan.trainer.model_copy(update={"backend": "megatron"})})
        self.trainer = build_trainer(BackendContext(plan=plan, model_path=setup.model_path,
                                                    tokenizer_path=setup.tokenizer_path, device=setup.device))

    def compute_log_probs(self, batch):
        return self.trainer.compute_log_probs(batch)

    def update(self, batch):
        return self.trainer.update(batch)

    def weights(self):
        return {n: t.clone() for bucket in self.trainer.weight_stream(64 << 20) for n, t in bucket}

    def state_dict(self):
        """The loop writes a final checkpoint in its torch format; this demo keeps none (its run
        folder is disposable; the trainer's own per-rank checkpoints are `save_checkpoint`)."""
        return {}

    def ping(self) -> str:
        return "actor"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--run-dir", default="/tmp/megatron-quickstart")
    args = ap.parse_args()

    import engine.runtime.loop as loop
    from compiler.api import compile_spec

    plan = compile_spec(str(ROOT / "specs" / "quickstart.yaml"), [
        f"trainer.total_steps={args.steps}", "checkpoint.every=100000", "checkpoint.export_hf=false",
        "tracking.backend=none"])
    loop.ActorWorker = MegatronActor
    summary = loop.train(plan, args.run_dir)
    rewards = []
    with open(Path(args.run_dir) / "metrics.jsonl") as f:
        for line in f:
            row = json.loads(line)
            if "reward/mean" in row:
                rewards.append(row["reward/mean"])
    last5 = sum(rewards[-5:]) / max(1, len(rewards[-5:]))
    print(json.dumps({"steps": len(rewards), "first_reward": rewards[0] if rewards else None,
                      "last5_mean_reward": last5, "summary_keys": sorted(summary)[:8]}))


if __name__ == "__main__":
    main()
