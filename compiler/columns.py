"""Which columns of a data row hold the question and the answer.

Read by the compiler (the column check of `engine plan`, on a file's first rows) and by the engine
(`engine.data.prompts`, `engine.study.splits`), so it lives here, below both: standard library only
(pyarrow inside `peek_rows`), no engine import.

Two layouts are read:

* verl-style rows: ``prompt`` (string or chat list) and ``reward_model.ground_truth``;
* plain question/answer rows, through the column mapping ``data.prompt_key`` / ``data.answer_key``
  (a dotted path reaches into nested columns). With the default ``prompt_key`` ("prompt") a row
  without a ``prompt`` column falls back to ``question``, then ``problem`` (the published GSM8K and
  MATH layouts).

An answer column is reduced to its final answer: a GSM8K solution ending in ``#### 72`` gives
``72``; a MATH solution gives the content of its last ``\\boxed{}``; anything else is used as is.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Optional

from compiler.boxed import last_boxed

#: Tried, in order, when ``prompt_key`` is the default "prompt" and a row has no such column.
PROMPT_FALLBACKS: tuple[str, ...] = ("question", "problem")
#: The answer path of verl-style rows (used when ``answer_key`` is not set).
DEFAULT_ANSWER_KEY = "reward_model.ground_truth"
_MISSING = object()
_NUMBER_WITH_COMMAS = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?")


def lookup(row: dict, path: str) -> Any:
    """``row[a][b]`` for ``path`` "a.b" (an exact top-level key "a.b" wins); `_MISSING` when absent."""
    if path in row:
        return row[path]
    value: Any = row
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return _MISSING
        value = value[part]
    return value


def prompt_column(row: dict, prompt_key: str = "prompt") -> Optional[str]:
    """The name of the column holding ``row``'s question (None when there is none)."""
    if lookup(row, prompt_key) is not _MISSING:
        return prompt_key
    if prompt_key == "prompt":
        return next((k for k in PROMPT_FALLBACKS if k in row), None)
    return None


def prompt_value(row: dict, prompt_key: str = "prompt") -> Any:
    """The raw prompt of ``row`` (string or chat list), or None."""
    key = prompt_column(row, prompt_key)
    return None if key is None else lookup(row, key)


def final_answer(text: Any) -> Optional[str]:
    """The final answer in an answer column's value (see the module docstring); None if empty."""
    if text is None:
        return None
    if isinstance(text, (list, tuple)):  # some verl files store a list of accepted answers
        text = text[0] if text else None
        if text is None:
            return None
    s = str(text)
    if "####" in s:
        s = s.rsplit("####", 1)[1].strip()
        if _NUMBER_WITH_COMMAS.fullmatch(s):
            s = s.replace(",", "")  # "1,000" -> "1000"
    elif "\\boxed" in s or "\\fbox" in s:
        boxed = last_boxed(s)
        s = boxed if boxed is not None else s
    s = s.strip()
    return s or None


def answer_value(row: dict, answer_key: Optional[str] = None) -> Optional[str]:
    """The ground-truth answer of ``row``: ``reward_model.ground_truth`` by default, else the
    ``answer_key`` column reduced by `final_answer`."""
    value = lookup(row, answer_key or DEFAULT_ANSWER_KEY)
    if value is _MISSING:
        return None
    if answer_key is None:  # verl rows: the ground truth is already the answer
        if isinstance(value, (list, tuple)):
            value = value[0] if value else None
        return None if value is None else str(value)
    return final_answer(value)


# -- the cheap check at `engine plan` time -----------------------------------------------------------

def peek_rows(path: str | Path, n: int = 20) -> list[dict]:
    """The first ``n`` rows of a local ``.jsonl`` / ``.parquet`` file (only those are read)."""
    p = Path(path)
    if p.suffix == ".parquet":
        import pyarrow.parquet as pq

        f = pq.ParquetFile(str(p))
        rows: list[dict] = []
        for batch in f.iter_batches(batch_size=n):
            rows = batch.to_pylist()
            break
        return rows
    rows = []
    with p.open() as fh:
        for line in fh:
            if line.strip():
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(obj, dict):
                    rows.append(obj)
            if len(rows) >= n:
                break
    return rows


def column_problems(path: str | Path, prompt_key: str = "prompt", answer_key: Optional[str] = None,
                    n: int = 20) -> list[tuple[str, str, str]]:
    """(field, message, hint) for each column mapping that the first ``n`` rows of ``path`` do not
    satisfy; [] when they do (or when the file is not a local .jsonl/.parquet)."""
    p = Path(path)
    if p.suffix not in (".jsonl", ".parquet") or not p.is_file():
        return []
    try:
        rows = peek_rows(p, n)
    except Exception as e:  # unreadable: say so now rather than after the model loads
        return [("file", f"cannot read {p}: {e}", "check the file is valid JSON lines or parquet")]
    if not rows:
        return [("file", f"{p} has no rows", "give a file with question/answer rows")]
    cols = sorted({k for r in rows for k in r})
    shown = ", ".join(cols[:12]) + (", ..." if len(cols) > 12 else "")
    out = []
    if not any(prompt_column(r, prompt_key) for r in rows):
        guess = next((c for c in ("question", "problem", "prompt", "query", "input") if c in cols), None)
        out.append(("prompt_key", f"no column {prompt_key!r} in the first {len(rows)} rows of {p} (columns: {shown})",
                    f"set data.prompt_key={guess}" if guess else "set data.prompt_key to the question column"))
    if not any(answer_value(r, answer_key) for r in rows):
        guess = next((c for c in ("answer", "final_answer", "solution", "ground_truth") if c in cols), None)
        out.append(("answer_key", f"no answer at {answer_key or DEFAULT_ANSWER_KEY!r} in the first {len(rows)} rows "
                    f"of {p} (columns: {shown})",
                    f"set data.answer_key={guess}" if guess else "set data.answer_key to the answer column"))
    return out
