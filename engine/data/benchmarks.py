"""The six evaluation benchmarks of the SimpleRL-Zoo study, read from their JSON-lines files.

Each benchmark ships in its own layout (the files in ``evaluation.data_dir``, named
``<benchmark>.jsonl``). `benchmark_rows` turns one into verl-style rows (``prompt`` as a chat list,
``reward_model.ground_truth``, ``data_source``, ``level``) so evaluation prompts go through the same
template, tokenizer and length accounting as training prompts. A row whose question or answer
cannot be found keeps no ground truth and is counted as a bad row downstream, never dropped.

Gold answers:

* gsm8k: the number after ``####`` in ``answer`` (thousands separators removed);
* math500, aime24: ``answer``;
* amc23: ``answer`` (a float such as ``27.0``, written as ``27``);
* minerva_math: the last ``\\boxed{}`` of ``solution``;
* olympiadbench: ``final_answer`` (a list of strings), ``$`` removed, joined with ``, ``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from compiler.boxed import last_boxed
from schemas.run import BENCHMARKS


def benchmark_path(name: str, data_dir: str | Path) -> Path:
    """Where ``name`` is read from: ``<data_dir>/<name>.jsonl``."""
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}")
    return Path(data_dir) / f"{name}.jsonl"


def _number_text(value: Any) -> Optional[str]:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    text = str(value).strip()
    return text or None


def gold_answer(name: str, row: dict) -> Optional[str]:
    """The reference answer of one ``name`` row as a string, or None when the row has none."""
    if name == "gsm8k":
        answer = row.get("answer")
        if not isinstance(answer, str) or "####" not in answer:
            return None
        return answer.rpartition("####")[2].strip().replace(",", "") or None
    if name == "minerva_math":
        solution = row.get("solution")
        return last_boxed(solution) if isinstance(solution, str) else None
    if name == "olympiadbench":
        final = row.get("final_answer")
        if isinstance(final, str):
            final = [final]
        if not isinstance(final, list) or not final:
            return None
        parts = [str(f).replace("$", "").strip() for f in final]
        return ", ".join(p for p in parts if p) or None
    return _number_text(row.get("answer"))


def question_text(row: dict) -> Optional[str]:
    """The problem statement: ``problem``, else ``question`` (OlympiadBench adds its ``context``)."""
    for key in ("problem", "question"):
        text = row.get(key)
        if isinstance(text, str) and text.strip():
            context = row.get("context")
            if isinstance(context, str) and context.strip():
                return f"{context.strip()}\n\n{text}"
            return text
    return None


def benchmark_rows(name: str, data_dir: str | Path) -> list[dict]:
    """All rows of benchmark ``name`` as verl-style rows (see the module docstring).

    A line that is not valid JSON becomes an ``__error__`` row (counted as bad by
    `engine.data.prompts.build_prompt_set`). Raises FileNotFoundError when the file is missing.
    """
    path = benchmark_path(name, data_dir)
    if not path.exists():
        raise FileNotFoundError(f"benchmark file not found: {path} (evaluation.data_dir={data_dir})")
    from engine.core.files import json_lines

    rows: list[dict] = []
    for _, raw, err in json_lines(path):
        if err is not None:
            rows.append({"__error__": err})
            continue
        question = question_text(raw)
        rows.append({
            "prompt": [{"role": "user", "content": question}] if question else None,
            "reward_model": {"style": "rule", "ground_truth": gold_answer(name, raw)},
            "data_source": name,
            "level": raw.get("level"),
        })
    return rows
