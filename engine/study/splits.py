"""SimpleRL-Zoo training data: the Easy / Medium / Hard splits and a validation set (`engine data simplerl`).

The recipe's splits (about 8K problems each):

* ``easy``: GSM8K train + MATH level 1;
* ``medium``: MATH levels 1-4;
* ``hard``: MATH levels 3-5.

Inputs in their published layouts: GSM8K as JSON lines (``question``, ``answer`` ending in
``#### N``) or parquet with those columns; MATH as its release folder (``<dir>/**/<n>.json`` with
``problem``, ``level`` "Level 3", ``type``, ``solution``), or one JSON-lines file of such rows (an
``answer`` column is used when present, else the last ``\\boxed{}`` of ``solution``).

Every benchmark problem in ``benchmarks_dir`` (MATH500 included) is held out: a training or
validation row whose normalised problem text (`normalise_problem`) equals a benchmark's is dropped
and counted. The validation set is drawn first (seeded) from what is left, and never reused in a
split. Rows are verl-style: ``prompt`` (chat list, one user turn), ``reward_model`` {style "rule",
``ground_truth``}, ``data_source`` ("gsm8k" / "math"), ``level`` (MATH 1-5; GSM8K rows have level
0), ``ability``, ``extra_info`` {``index``, ``subject``}. Bad rows are counted with their reasons.
"""

from __future__ import annotations

import json
import random
import re
import unicodedata
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Optional

from compiler.boxed import last_boxed
from compiler.columns import final_answer
from engine.core.atomic import atomic_path, write_json_atomic

#: The recipe's splits: name -> (include GSM8K, MATH levels).
SPLITS: dict[str, tuple[bool, tuple[int, ...]]] = {
    "easy": (True, (1,)),
    "medium": (False, (1, 2, 3, 4)),
    "hard": (False, (3, 4, 5)),
}

_SPACE_RE = re.compile(r"\s+")
_STRIP_RE = re.compile(r"[$\s.,;:!?]|\\[,;!: ]|\\(?:left|right)(?![A-Za-z])|(?<=\\)[dt](?=frac)")


def normalise_problem(text: str) -> str:
    """The dedup key of a problem statement: NFKC, lower case, without whitespace, ``$``, end
    punctuation, LaTeX spacing commands, ``\\left`` / ``\\right`` and the ``d``/``t`` of
    ``\\dfrac`` / ``\\tfrac`` (so "$\\dfrac{1}{2}$ of  x." and "\\frac{1}{2} of x" match)."""
    t = unicodedata.normalize("NFKC", text).lower()
    return _STRIP_RE.sub("", t)


def _read_json_lines(path: Path, bad: Counter) -> list[dict]:
    from engine.core.files import json_lines

    rows = []
    for _, obj, err in json_lines(path):
        if err is None:
            rows.append(obj)
        else:
            bad[f"{path.name}: {err.split(': ', 1)[1]}"] += 1
    return rows


def _read_table(path: Path, bad: Counter) -> list[dict]:
    if path.suffix == ".parquet":
        from engine.core.files import parquet_rows

        return parquet_rows(path)
    return _read_json_lines(path, bad)


def read_gsm8k(path: str | Path, bad: Counter) -> list[dict]:
    """GSM8K rows ``{question, answer, subject, level=0, source}`` from its JSONL / parquet file."""
    out = []
    for i, r in enumerate(_read_table(Path(path), bad)):
        q, a = r.get("question"), r.get("answer")
        if not isinstance(q, str) or not q.strip():
            bad["gsm8k: no question"] += 1
            continue
        if not isinstance(a, str) or "####" not in a:
            bad["gsm8k: answer without '#### N'"] += 1
            continue
        ans = final_answer(a)
        if not ans:
            bad["gsm8k: empty answer after '####'"] += 1
            continue
        out.append({"question": q.strip(), "answer": ans, "level": 0, "subject": "gsm8k", "source": "gsm8k",
                    "index": i})
    return out


def _math_level(value: Any) -> Optional[int]:
    if isinstance(value, int) and not isinstance(value, bool):
        return value if 1 <= value <= 5 else None
    if isinstance(value, str):
        m = re.fullmatch(r"\s*(?:level\s*)?([1-5])\s*", value, re.IGNORECASE)
        return int(m.group(1)) if m else None
    return None


def read_math(path: str | Path, bad: Counter) -> list[dict]:
    """MATH rows ``{question, answer, level, subject, source}`` from the release folder
    (``**/*.json``, one problem per file) or a JSON-lines file of such rows."""
    p = Path(path)
    raw: list[tuple[str, dict]] = []
    if p.is_dir():
        for f in sorted(p.rglob("*.json")):
            try:
                obj = json.loads(f.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError):
                bad["math: invalid JSON file"] += 1
                continue
            if isinstance(obj, dict):
                raw.append((str(f.relative_to(p)), obj))
            else:
                bad["math: not a JSON object"] += 1
    else:
        raw = [(f"{p.name}:{i}", r) for i, r in enumerate(_read_table(p, bad))]
    out = []
    for i, (where, r) in enumerate(raw):
        q = r.get("problem")
        if not isinstance(q, str) or not q.strip():
            bad["math: no problem"] += 1
            continue
        level = _math_level(r.get("level"))
        if level is None:
            bad[f"math: level not 1-5 ({str(r.get('level'))[:20]})"] += 1
            continue
        ans = r.get("answer")
        ans = str(ans).strip() if ans is not None and str(ans).strip() else None
        if ans is None and isinstance(r.get("solution"), str):
            ans = last_boxed(r["solution"])
        if not ans:
            bad["math: no \\boxed{} answer in solution"] += 1
            continue
        subject = r.get("type") or r.get("subject") or (where.split("/")[-2] if "/" in where else "math")
        out.append({"question": q.strip(), "answer": ans.strip(), "level": level, "subject": str(subject),
                    "source": "math", "index": i})
    return out


def benchmark_keys(benchmarks_dir: str | Path) -> dict[str, str]:
    """``{normalised problem: benchmark}`` of every ``*.jsonl`` in ``benchmarks_dir`` (its
    ``problem`` and ``question`` fields, OlympiadBench's with and without ``context``)."""
    keys: dict[str, str] = {}
    d = Path(benchmarks_dir)
    for f in sorted(d.glob("*.jsonl")):
        for r in _read_json_lines(f, Counter()):
            for k in ("problem", "question"):
                v = r.get(k)
                if isinstance(v, str) and v.strip():
                    keys.setdefault(normalise_problem(v), f.stem)
                    ctx = r.get("context")
                    if isinstance(ctx, str) and ctx.strip():
                        keys.setdefault(normalise_problem(f"{ctx.strip()}\n\n{v}"), f.stem)
    return keys


def to_verl_row(p: dict, split: str) -> dict:
    """One problem as a verl-style row (see the module docstring)."""
    return {
        "prompt": [{"role": "user", "content": p["question"]}],
        "reward_model": {"style": "rule", "ground_truth": p["answer"]},
        "data_source": p["source"],
        "level": int(p["level"]),
        "ability": "math",
        "extra_info": {"split": split, "index": int(p["index"]), "subject": p["subject"]},
    }


def build_splits(gsm8k: list[dict], math: list[dict], held_out: dict[str, str], *, size: int = 8000,
                 val_size: int = 500, seed: int = 0) -> tuple[dict[str, list[dict]], dict[str, Any]]:
    """The splits (``easy``, ``medium``, ``hard``, ``val``) of the problems, and the report.

    Drops problems whose normalised text is in ``held_out`` (counted per benchmark) and repeated
    problems (the first is kept). ``val``: ``val_size`` problems drawn (seeded) before the splits,
    from GSM8K and MATH alike, and excluded from every split. Each split is its eligible problems,
    shuffled (seeded), cut to ``size`` (0 = no cut).
    """
    report: dict[str, Any] = {"input": {"gsm8k": len(gsm8k), "math": len(math)}, "held_out": Counter(),
                              "duplicates": 0}
    seen: set[str] = set()
    pool = []
    for p in gsm8k + math:
        key = normalise_problem(p["question"])
        if key in held_out:
            report["held_out"][held_out[key]] += 1
            continue
        if key in seen:
            report["duplicates"] += 1
            continue
        seen.add(key)
        pool.append(p)
    rng = random.Random(seed)
    order = list(range(len(pool)))
    rng.shuffle(order)
    val_idx = set(order[:min(val_size, len(pool))])
    out: dict[str, list[dict]] = {"val": [to_verl_row(pool[i], "val") for i in sorted(val_idx)]}
    train = [p for i, p in enumerate(pool) if i not in val_idx]
    for name, (with_gsm8k, levels) in SPLITS.items():
        eligible = [p for p in train if (p["source"] == "gsm8k" and with_gsm8k)
                    or (p["source"] == "math" and p["level"] in levels)]
        random.Random(f"{seed}:{name}").shuffle(eligible)
        if size:
            eligible = eligible[:size]
        out[name] = [to_verl_row(p, name) for p in eligible]
    report["held_out"] = dict(report["held_out"])
    report["splits"] = {name: {"rows": len(rows), "by_level": dict(sorted(Counter(r["level"] for r in rows).items())),
                               "by_source": dict(sorted(Counter(r["data_source"] for r in rows).items()))}
                        for name, rows in out.items()}
    return out, report


def prepare(gsm8k_path: Optional[str], math_path: Optional[str], out_dir: str | Path,
            benchmarks_dir: str | Path, *, size: int = 8000, val_size: int = 500, seed: int = 0) -> dict[str, Any]:
    """Read the inputs, build the splits and write ``<out>/{easy,medium,hard,val}.parquet`` and
    ``<out>/report.json`` (each file atomically); returns the report."""
    
    import pyarrow as pa
    import pyarrow.parquet as pq

    bad: Counter = Counter()
    gsm = read_gsm8k(gsm8k_path, bad) if gsm8k_path else []
    mth = read_math(math_path, bad) if math_path else []
    if not Path(benchmarks_dir).is_dir():
        raise FileNotFoundError(f"benchmarks folder not found: {benchmarks_dir} (every benchmark is held out)")
    held = benchmark_keys(benchmarks_dir)
    splits, report = build_splits(gsm, mth, held, size=size, val_size=val_size, seed=seed)
    report["bad_rows"] = sum(bad.values())
    report["bad_row_reasons"] = dict(bad)
    report["benchmarks_dir"] = str(benchmarks_dir)
    report["benchmark_problems"] = len(held)
    report.update(size=size, val_size=val_size, seed=seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report["files"] = {}
    for name, rows in splits.items():
        path = out / f"{name}.parquet"
        with atomic_path(path) as tmp:
            pq.write_table(pa.Table.from_pylist(rows) if rows else pa.table({}), str(tmp))
        report["files"][name] = str(path)
    write_json_atomic(out / "report.json", report, indent=2, sort_keys=True)
    return report


def format_report(report: dict[str, Any]) -> str:
    """A few lines for the terminal: rows per split and level, held-out and bad rows."""
    lines = [f"input: {report['input']['gsm8k']} GSM8K + {report['input']['math']} MATH problems; "
             f"{report['bad_rows']} bad rows" + (f" {report['bad_row_reasons']}" if report["bad_rows"] else "")]
    held = report["held_out"]
    lines.append(f"held out (benchmark problems, {report['benchmark_problems']} known): {sum(held.values())}"
                 + (f" {held}" if held else "") + f"; duplicates dropped: {report['duplicates']}")
    for name, s in report["splits"].items():
        levels = ", ".join(f"L{k} {v}" for k, v in s["by_level"].items()) or "empty"
        lines.append(f"{name:>6}: {s['rows']:>5} rows ({levels})  -> {report['files'].get(name, '')}")
    return "\n".join(lines)
