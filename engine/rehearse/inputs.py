"""The rehearsal's inputs: a tokenizer folder and prompt sets shaped like the plan's, without the model.

A paper spec names a model that is not on this machine and data paths that are placeholders; the
rehearsal needs neither, only their shapes. Prompts are synthetic token ids whose lengths span the
plan's prompt limit (one in 16 at ``data.max_prompt_length``, so padded batches reach the widest
shape the trainer will see), in the numbers one step, the validation set and each benchmark use.
The tokenizer is the quickstart's (pad and end tokens, a folder every worker can see).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.data.prompts import PromptSet
from engine.model_files import ModelFiles

if TYPE_CHECKING:  # annotations only: no import at run time
    from compiler.plan import Plan


def synthetic_prompts(count: int, max_len: int, seed: int, source: str) -> PromptSet:
    """``count`` prompts of token ids (id 3) with lengths up to ``max_len``; ground truths 0-9."""
    rng = random.Random(seed)
    ids = []
    for i in range(count):
        length = max_len if i % 16 == 0 else rng.randint(max(1, max_len // 8), max(1, max_len // 2))
        ids.append([3] * length)
    gts = [str(rng.randint(0, 9)) for _ in range(count)]
    report = {"rows": count, "kept": count, "bad_rows": 0, "synthetic": True, "longest": max_len}
    return PromptSet(ids, [f"synthetic {source} prompt {i}" for i in range(count)], gts, [None] * count,
                     [source] * count, report)


def rehearsal_inputs(plan: Plan, folder: Path) -> Any:
    """`engine.runtime.loop.RunInputs` for ``plan``: the quickstart tokenizer saved in ``folder``
    (the model and tokenizer folder every worker checks it can see), and synthetic prompt sets."""
    from engine.quickstart.tokenizer import build_tokenizer
    from engine.runtime.loop import RunInputs

    folder.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer()
    tok.save_pretrained(str(folder))
    end = (int(tok.eos_token_id),)
    files = ModelFiles(str(folder), str(folder), tok, end, tuple(tok.convert_ids_to_tokens(list(end))))
    spec = plan.spec
    d, e = spec.data, spec.evaluation
    train = synthetic_prompts(2 * d.train_batch_size, d.max_prompt_length, spec.seed, "train")
    val = synthetic_prompts(max(1, e.batch_size // 8), d.max_prompt_length, spec.seed + 1, "val") if d.val else None
    bench = {name: synthetic_prompts(8, d.max_prompt_length, spec.seed + 2 + i, name)
             for i, name in enumerate(e.benchmarks)} if e.every else {}
    return RunInputs(files, train, val, bench)
