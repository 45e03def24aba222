"""Prompt data: read verl-style rows, select by difficulty, apply the template, tokenize, batch.

Rows (parquet or JSONL) carry ``prompt`` (a string or a chat list of ``{role, content}``),
``reward_model.ground_truth``, ``data_source`` and optionally ``level`` (an int or "Level 3").
Nothing is dropped silently: rows without a usable prompt or answer, rows outside the selected
levels and prompts over ``max_prompt_length`` are counted in `PromptSet.report`.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Optional

from compiler.columns import answer_value, prompt_value
from schemas.data import COMPLEX_TEMPLATE, SIMPLE_TEMPLATE, render_prompt

def template_text(kind: str, custom: Optional[str] = None) -> Optional[str]:
    """The template string for ``data.prompt_template`` (None for "none": the prompt is used as is)."""
    if kind == "simple":
        return SIMPLE_TEMPLATE
    if kind == "complex":
        return COMPLEX_TEMPLATE
    if kind == "custom":
        if not custom or "{input}" not in custom:
            raise ValueError("data.custom_template must contain '{input}' when prompt_template is 'custom'")
        return custom
    if kind == "none":
        return None
    raise ValueError(f"unknown prompt template {kind!r}")


def apply_template(question: str, template: Optional[str]) -> str:
    """Put ``question`` into ``template`` (``schemas.render_prompt``); no template: the question as is."""
    return question if template is None else render_prompt(template, question)


def read_rows(path: str | Path) -> list[dict]:
    """All rows of a ``.parquet`` or ``.jsonl`` / ``.json`` file as dicts."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"data file not found: {p}")
    if p.suffix == ".parquet":
        from engine.core.files import parquet_rows

        return parquet_rows(p)
    if p.suffix in (".jsonl", ".json"):
        from engine.core.files import json_lines

        return [row if err is None else {"__error__": err} for _, row, err in json_lines(p)]
    raise ValueError(f"unsupported data file {p} (expected .parquet or .jsonl)")


def write_parquet(rows: list[dict], path: str | Path) -> None:
    """Write rows as a parquet file (used for the synthetic data and in tests)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), str(path))


def parse_level(value: Any) -> Optional[int]:
    """``3``, ``"3"`` or ``"Level 3"`` -> 3; anything else -> None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        m = re.search(r"-?\d+", value)
        return int(m.group()) if m else None
    return None


def question_of(prompt: Any) -> Optional[str]:
    """The question text of a prompt: the string itself, or the last user turn of a chat list."""
    if isinstance(prompt, str):
        return prompt if prompt.strip() else None
    if isinstance(prompt, (list, tuple)):
        users = [m.get("content") for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
        if users and isinstance(users[-1], str) and users[-1].strip():
            return users[-1]
    return None


def ground_truth_of(row: dict) -> Optional[str]:
    """``row['reward_model']['ground_truth']`` as a string (or None)."""
    rm = row.get("reward_model")
    gt = rm.get("ground_truth") if isinstance(rm, dict) else None
    if gt is None:
        return None
    if isinstance(gt, (list, tuple)):  # some verl files store a list of accepted answers
        gt = gt[0] if gt else None
    return None if gt is None else str(gt)


@dataclass
class PromptSet:
    """Tokenized prompts ready for rollout; ``report`` counts what was left out and why."""

    prompt_ids: list[list[int]] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    ground_truths: list[str] = field(default_factory=list)
    levels: list[Optional[int]] = field(default_factory=list)
    data_sources: list[str] = field(default_factory=list)
    report: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.prompt_ids)

    def subset(self, keep: Iterable[int]) -> "PromptSet":
        """The prompts at indices ``keep`` (report copied)."""
        idx = list(keep)
        return PromptSet([self.prompt_ids[i] for i in idx], [self.texts[i] for i in idx],
                         [self.ground_truths[i] for i in idx], [self.levels[i] for i in idx],
                         [self.data_sources[i] for i in idx], dict(self.report))


def build_prompt_set(rows: list[dict], tokenizer: Any, template: Optional[str], max_prompt_length: int,
                     prompt_key: str = "prompt", levels: Optional[list[int]] = None,
                     answer_key: Optional[str] = None) -> PromptSet:
    """Validate, select, template and tokenize ``rows``.

    Counts in ``report``: rows, kept, bad_rows (with reasons), outside_levels, too_long (and the
    longest prompt seen, in tokens). With template "none" a chat-list prompt goes through the
    tokenizer's chat template when it has one. Columns: `compiler.columns` (``prompt_key``, and
    ``answer_key`` instead of ``reward_model.ground_truth``).
    """
    out = PromptSet()
    reasons: Counter[str] = Counter()
    outside = too_long = longest = 0
    wanted = set(levels) if levels else None
    for row in rows:
        if "__error__" in row:
            reasons[row["__error__"].split(":", 1)[-1].strip()] += 1
            continue
        raw = prompt_value(row, prompt_key)
        question = question_of(raw)
        gt = answer_value(row, answer_key)
        if question is None:
            reasons[f"no usable '{prompt_key}'"] += 1
            continue
        if gt is None or not gt.strip():
            reasons[f"no {answer_key or 'reward_model.ground_truth'}"] += 1
            continue
        level = parse_level(row.get("level"))
        if wanted is not None and level not in wanted:
            outside += 1
            continue
        if template is None and isinstance(raw, (list, tuple)) and getattr(tokenizer, "chat_template", None):
            text = tokenizer.apply_chat_template(list(raw), tokenize=False, add_generation_prompt=True)
        else:
            text = apply_template(question, template)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        longest = max(longest, len(ids))
        if len(ids) > max_prompt_length:
            too_long += 1
            continue
        out.prompt_ids.append(ids)
        out.texts.append(text)
        out.ground_truths.append(gt)
        out.levels.append(level)
        out.data_sources.append(str(row.get("data_source", "unknown")))
    out.report = {
        "rows": len(rows), "kept": len(out), "bad_rows": sum(reasons.values()), "bad_row_reasons": dict(reasons),
        "outside_levels": outside, "too_long": too_long, "max_prompt_length": max_prompt_length,
        "longest_prompt_tokens": longest,
    }
    return out


def batch_indices(step: int, batch_size: int, n: int, seed: int, shuffle: bool = True) -> list[int]:
    """Row indices of RL step ``step`` (0-based): consecutive slices of per-epoch permutations.

    A pure function of its arguments, so a resumed run draws exactly the batches the uninterrupted
    run would have. Epoch ``e`` uses the permutation seeded by ``(seed, e)`` (computed once per epoch,
    not once per step: `_epoch_order`).
    """
    if n <= 0:
        raise ValueError("no prompts to train on")
    out = []
    pos = step * batch_size
    for p in range(pos, pos + batch_size):
        epoch, i = divmod(p, n)
        out.append(_epoch_order(n, seed, epoch, shuffle)[i])
    return out


@lru_cache(maxsize=4)
def _epoch_order(n: int, seed: int, epoch: int, shuffle: bool) -> tuple[int, ...]:
    """The row order of one epoch (a permutation of ``range(n)`` seeded by ``(seed, epoch)``)."""
    order = list(range(n))
    if shuffle:
        random.Random(f"{seed}:{epoch}").shuffle(order)
    return tuple(order)
