"""A short built-in pretraining that turns a random tiny model into a weak "base model".

The corpus imitates what a real base model saw: lists of arithmetic facts ("7+8=15"), worked
answers ("3+4=7. \\boxed{7}"; two-digit sums go units then tens) and, more often, hasty answers that
jump straight to a boxed number that is off by a little. After pretraining the model can do the
sums when it writes them out but mostly does not, so sampled at temperature 1 it is right about 30%
of the time (0.31 on the quickstart's first RL step); zero RL then has something latent to elicit,
and the response length grows as the worked style wins, as on real models.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass

import torch

from engine.data.prompts import apply_template
from engine.data.synthetic import Problem, sample_problem

#: Version of the corpus recipe; part of the cache key of a pretrained base model.
CORPUS_VERSION = 3


@dataclass(frozen=True)
class CorpusMix:
    """Shares of the pretraining corpus (fractions).

    facts: documents that are plain lists of sums ("7+8=15"), the skills the worked style uses.
    worked: of the question/answer documents, the share that work the sum out before answering
    (always right). hasty_right: of the hasty answers, the share whose boxed number is right; the
    rest are off by a small amount (the base model's careless habit).
    """

    facts: float = 0.3
    worked: float = 0.25
    hasty_right: float = 0.0


def worked_steps(problem: Problem) -> str:
    """The written-out computation: ``3+4=7`` or, with a two-digit operand, units then tens
    (``47+8`` -> ``7+8=15, 40+15=55``)."""
    a, b = problem.a, problem.b
    if problem.op != "+" or (a < 10 and b < 10) or a >= 100 or b >= 100:
        return f"{problem.expression}={problem.answer}"
    units = a % 10 + b % 10
    tens = (a // 10 + b // 10) * 10
    return f"{a % 10}+{b % 10}={units}, {tens}+{units}={tens + units}"


def response_text(problem: Problem, rng: random.Random, mix: CorpusMix) -> str:
    """One pretraining-corpus answer for ``problem`` (without the end token)."""
    ans = problem.answer
    if rng.random() < mix.worked:
        return f"{worked_steps(problem)}. \\boxed{{{ans}}}"
    if rng.random() >= mix.hasty_right:
        ans = ans + rng.choice((-10, -2, -1, 1, 2, 10))
    return f"\\boxed{{{ans}}}"


def fact_document(rng: random.Random, levels: list[int]) -> str:
    """A list of 4-8 true one-digit facts (sums; products when level 2 is in ``levels``) and, when
    levels above 2 are, the tens step of the worked style (``40+15=55``)."""
    kinds = ["add"] + (["mul"] if 2 in levels else []) + (["tens"] if max(levels) > 2 else [])
    lines = []
    for _ in range(rng.randint(4, 8)):
        kind = rng.choice(kinds)
        if kind == "mul":
            a, b = rng.randint(0, 9), rng.randint(0, 9)
            lines.append(f"{a}*{b}={a * b}")
            continue
        if kind == "add":
            a, b = rng.randint(0, 9), rng.randint(0, 9)
        else:
            a, b = 10 * rng.randint(1, 18), rng.randint(0, 18)
        lines.append(f"{a}+{b}={a + b}")
    return "\n".join(lines)


def corpus_documents(n: int, levels: list[int], template: str, eos: str, seed: int,
                     mix: CorpusMix = CorpusMix()) -> list[str]:
    """``n`` pretraining documents: fact lists, and prompt template + answer, each + end token."""
    rng = random.Random(seed)
    docs = []
    for _ in range(n):
        if rng.random() < mix.facts:
            docs.append(fact_document(rng, levels) + eos)
            continue
        p = sample_problem(rng, rng.choice(levels))
        docs.append(apply_template(p.question, template) + response_text(p, rng, mix) + eos)
    return docs


def progress_line(done: int, steps: int, loss: float, elapsed_s: float) -> str:
    """``pretrain step 120/1200 (10%) loss 1.234 | 0:12 elapsed, ETA 1:48``: the ETA assumes the
    remaining steps take as long as the ``done`` ones did on average (seconds -> m:ss)."""
    from engine.core.duration import fmt_duration

    eta = elapsed_s / max(done, 1) * (steps - done)
    return (f"pretrain step {done}/{steps} ({100 * done // max(steps, 1)}%) loss {loss:.3f} "
            f"| {fmt_duration(elapsed_s)} elapsed, ETA {fmt_duration(eta)}")


def pretrain(model: torch.nn.Module, tokenizer, steps: int, levels: list[int], template: str, seed: int,
             batch_size: int = 64, lr: float = 3e-3, log_every: int = 100, log=print) -> dict[str, float]:
    """Train ``model`` for ``steps`` AdamW steps on the synthetic corpus (next-token loss, nats).

    Cosine learning-rate decay from ``lr`` to 0 with 5% warm-up. A progress line with the ETA is logged
    after the first 10 steps and every ``log_every`` steps. Returns the final loss and wall time.
    """
    torch.manual_seed(seed)
    docs = corpus_documents(steps * batch_size, levels, template, tokenizer.eos_token, seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    warm = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps))))
    model.train()
    t0 = time.perf_counter()
    loss_ema = None
    for step in range(steps):
        batch = tokenizer(docs[step * batch_size:(step + 1) * batch_size], padding=True,
                          return_tensors="pt", add_special_tokens=False)
        ids, mask = batch["input_ids"], batch["attention_mask"]
        labels = ids.masked_fill(mask == 0, -100)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        loss_ema = loss.item() if loss_ema is None else 0.95 * loss_ema + 0.05 * loss.item()
        if log and log_every and ((step + 1) % log_every == 0 or step + 1 == min(10, steps)):
            log(progress_line(step + 1, steps, loss_ema, time.perf_counter() - t0))
    model.eval()
    return {"pretrain_loss": float(loss_ema or 0.0), "pretrain_time_s": time.perf_counter() - t0}
