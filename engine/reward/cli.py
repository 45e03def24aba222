"""``engine grade IN.jsonl --out OUT.jsonl``: grade a file of responses.

Input rows: ``{"response": ..., "ground_truth": ...}`` (other fields are kept). Output rows add
``extracted``, ``boxed``, ``correct``, ``reward`` and ``status``. A row that cannot be read (bad
JSON, not an object, missing or non-string fields) is written with an ``error`` field and counted;
no row is dropped.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import List, Optional

from .config import RewardConfig
from .grader import Grader

_CHUNK = 4096


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="engine grade", description="Grade math responses (rule-based reward).")
    p.add_argument("input", help="JSONL file with rows {\"response\": ..., \"ground_truth\": ...}")
    p.add_argument("--out", required=True, help="output JSONL path")
    p.add_argument("--format", choices=["none", "strict", "independent"], default="none",
                   help="reward format mode (default: none)")
    p.add_argument("--workers", type=int, default=RewardConfig.workers,
                   help="most verification processes, capped at the CPUs available and started only "
                        "when an item needs one; 0 = in-process (default: %(default)s)")
    p.add_argument("--timeout-s", type=float, default=RewardConfig.timeout_s,
                   help="per-verification timeout in seconds (default: %(default)s)")
    p.add_argument("--format-penalty", type=float, default=RewardConfig.format_penalty)
    p.add_argument("--end-token", action="append", default=[],
                   help="cut responses at this string (repeatable)")
    p.add_argument("--assistant-marker", default=None,
                   help="drop text up to the last occurrence of this marker")
    return p


def _check_row(obj) -> Optional[str]:
    if not isinstance(obj, dict):
        return "row is not a JSON object"
    if "response" not in obj:
        return "missing field 'response'"
    if "ground_truth" not in obj:
        return "missing field 'ground_truth'"
    if not isinstance(obj["response"], str):
        return "field 'response' is not a string"
    gt = obj["ground_truth"]
    if isinstance(gt, bool) or not isinstance(gt, (str, int, float, list)) or gt == "" or gt == []:
        return "field 'ground_truth' is empty or not a string/number/list"
    return None


def grade_command(args: List[str]) -> int:
    """Entry point of ``engine grade``; returns the process exit code."""
    ns = _parser().parse_args(args)
    try:
        config = RewardConfig(format=ns.format, timeout_s=ns.timeout_s, workers=ns.workers,
                              format_penalty=ns.format_penalty)
    except ValueError as e:
        print(f"engine grade: {e}", file=sys.stderr)
        return 2
    t0 = time.monotonic()
    counts = {"rows": 0, "bad_rows": 0}
    out_path = Path(ns.out)
    if out_path.is_dir():
        print(f"engine grade: --out {ns.out} is a folder; give a file path, e.g. {out_path / 'graded.jsonl'}",
              file=sys.stderr)
        return 2
    if out_path.exists() and Path(ns.input).exists() and os.path.samefile(out_path, ns.input):
        print(f"engine grade: --out {ns.out} is the input file; writing it would destroy the rows being read. "
              "Give another --out", file=sys.stderr)
        return 2
    try:
        fin = open(ns.input, "r", encoding="utf-8", errors="replace")
    except OSError as e:
        print(f"engine grade: cannot read {ns.input}: {e.strerror or e}", file=sys.stderr)
        return 2
    # the output is written beside --out and moved into place at the end: a failure leaves --out as it was
    tmp_out = out_path.with_name(f".{out_path.name}.tmp-{os.getpid()}")
    try:
        fout = open(tmp_out, "w", encoding="utf-8")
    except OSError as e:
        fin.close()
        print(f"engine grade: cannot write {ns.out}: {e.strerror or e}", file=sys.stderr)
        return 2
    try:
        _grade_file(fin, fout, config, ns, counts)
    except BaseException:
        fout.close()
        tmp_out.unlink(missing_ok=True)
        raise
    finally:
        fin.close()
    fout.close()
    os.replace(tmp_out, out_path)
    st = counts.pop("stats")
    dt = time.monotonic() - t0
    graded = st["total"]
    acc = st["correct"] / graded if graded else 0.0
    print(f"rows: {counts['rows']}  graded: {graded}  correct: {st['correct']} ({acc:.1%})  "
          f"no_answer: {st['no_answer']}  timeouts: {st['timeouts']}  errors: {st['errors']}  "
          f"bad_rows: {counts['bad_rows']}  ({dt:.1f}s) -> {ns.out}")
    return 1 if counts["bad_rows"] else 0


def _grade_file(fin, fout, config: RewardConfig, ns, counts: dict) -> None:
    """Grade every row of ``fin`` into ``fout``; ``counts`` gets rows, bad_rows and the grader's stats."""
    with Grader(config, end_tokens=ns.end_token, assistant_marker=ns.assistant_marker) as grader:
        chunk: list = []   # (row dict or None, error or None, raw line)

        def flush() -> None:
            good = [(k, c[0]) for k, c in enumerate(chunk) if c[1] is None]
            results = grader.grade_batch([r["response"] for _, r in good],
                                         [r["ground_truth"] for _, r in good]) if good else []
            by_k = {k: res for (k, _), res in zip(good, results)}
            for k, (row, err, raw) in enumerate(chunk):
                if err is not None:
                    out = dict(row) if isinstance(row, dict) else {"raw": raw}
                    out["error"] = err
                    out.update(extracted=None, correct=False, reward=None)
                else:
                    out = dict(row)
                    out.update(by_k[k].to_dict())
                fout.write(json.dumps(out, ensure_ascii=False) + "\n")
            chunk.clear()

        for lineno, line in enumerate(fin, 1):
            raw = line.rstrip("\n")
            if not raw.strip():
                continue
            counts["rows"] += 1
            try:
                obj = json.loads(raw)
                err = _check_row(obj)
            except (json.JSONDecodeError, RecursionError) as e:
                obj, err = None, f"line {lineno}: invalid JSON ({e.__class__.__name__})"
            if err is not None:
                counts["bad_rows"] += 1
                if not err.startswith("line"):
                    err = f"line {lineno}: {err}"
            chunk.append((obj, err, raw[:1000]))
            if len(chunk) >= _CHUNK:
                flush()
        if chunk:
            flush()
        counts["stats"] = grader.stats()


def main() -> None:
    from compiler.errors import run_guarded

    sys.exit(run_guarded("engine grade", grade_command, sys.argv[1:]))


if __name__ == "__main__":
    main()
