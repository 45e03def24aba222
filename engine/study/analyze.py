"""`engine analyze RUN_DIR`: the four behaviours of every saved response, per step and per benchmark,
response length vs behaviour, agreement between judges, and the aha moment.

Writes ``RUN/analysis/analysis.json`` (what `engine report` reads) and
``RUN/analysis/labels_<judge>.parquet`` (one row per judged response: step, set, group, sample,
length, correct and the four labels). Ratios are over the responses a judge could label (a parse
failure is left out of the ratio and counted).
"""

from __future__ import annotations

import random
from collections import defaultdict
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from engine.core import rollouts as R
from engine.core.atomic import atomic_path, write_json_atomic
from engine.study.aha import detect_rise
from engine.study.judge import BEHAVIOURS, Labels

#: The behaviours whose rise is the paper's "aha moment".
AHA_BEHAVIOURS: tuple[str, ...] = ("verification", "backtracking")


def _ratio(labels: Sequence[Labels], b: str) -> Optional[float]:
    vals = [lab[b] for lab in labels if lab.get(b) is not None]
    return float(np.mean(vals)) if vals else None


def _sample(rows: list[dict], per_step: Optional[int], seed: int) -> list[dict]:
    """At most ``per_step`` rows of each (set, step), seeded; all when None."""
    if not per_step:
        return rows
    by: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        by[(r.get("set", "train"), r["step"])].append(r)
    out = []
    for key in sorted(by, key=str):
        group = by[key]
        if len(group) > per_step:
            group = random.Random(f"{seed}:{key}").sample(group, per_step)
        out += group
    return out


def agreement(a: Sequence[Labels], b: Sequence[Labels]) -> dict[str, dict[str, Optional[float]]]:
    """Per behaviour: responses both judges labelled, the share they agree on and Cohen's kappa
    (None when undefined: every label the same in both)."""
    out = {}
    for beh in BEHAVIOURS:
        pairs = [(x[beh], y[beh]) for x, y in zip(a, b) if x.get(beh) is not None and y.get(beh) is not None]
        if not pairs:
            out[beh] = {"n": 0, "agreement": None, "kappa": None}
            continue
        xs = np.array([p[0] for p in pairs], float)
        ys = np.array([p[1] for p in pairs], float)
        po = float(np.mean(xs == ys))
        pe = float(xs.mean() * ys.mean() + (1 - xs.mean()) * (1 - ys.mean()))
        out[beh] = {"n": len(pairs), "agreement": po, "kappa": None if pe >= 1 else (po - pe) / (1 - pe)}
    return out


def summarise(rows: list[dict], labels: Sequence[Labels]) -> dict[str, Any]:
    """Ratios per step (training rows) or per (set, step) (evaluation rows), and length vs behaviour."""
    by_step: dict[Any, list[Labels]] = defaultdict(list)
    lengths: dict[Any, list[int]] = defaultdict(list)
    for r, lab in zip(rows, labels):
        key = r["step"] if "set" not in r else f"{r['set']}@{r['step']}"
        by_step[key].append(lab)
        lengths[key].append(int(r["length"]))
    per_step = []
    order = lambda k: ("", k) if isinstance(k, int) else (k.split("@")[0], int(k.split("@")[1]))  # noqa: E731
    for key in sorted(by_step, key=order):  # by step number (set first for evaluation rows)
        labs = by_step[key]
        rec: dict[str, Any] = {"n": len(labs), "mean_length": float(np.mean(lengths[key]))}
        if isinstance(key, str):
            rec["set"], rec["step"] = key.split("@")[0], int(key.split("@")[1])
        else:
            rec["step"] = key
        rec.update({b: _ratio(labs, b) for b in BEHAVIOURS})
        per_step.append(rec)
    vs_length = {}
    for b in BEHAVIOURS:
        with_b = [int(r["length"]) for r, lab in zip(rows, labels) if lab.get(b) is True]
        without = [int(r["length"]) for r, lab in zip(rows, labels) if lab.get(b) is False]
        acc_with = [bool(r["correct"]) for r, lab in zip(rows, labels) if lab.get(b) is True]
        acc_without = [bool(r["correct"]) for r, lab in zip(rows, labels) if lab.get(b) is False]
        vs_length[b] = {"n_with": len(with_b), "n_without": len(without),
                        "mean_length_with": float(np.mean(with_b)) if with_b else None,
                        "mean_length_without": float(np.mean(without)) if without else None,
                        "accuracy_with": float(np.mean(acc_with)) if acc_with else None,
                        "accuracy_without": float(np.mean(acc_without)) if acc_without else None}
    return {"per_step": per_step, "length_vs_behaviour": vs_length,
            "overall": {b: _ratio(labels, b) for b in BEHAVIOURS}}


def _examples(rows: list[dict], labels: Sequence[Labels], steps: set[int], behaviour: Optional[str], want: Optional[bool],
              k: int = 2, max_chars: int = 600) -> list[dict]:
    out = []
    for r, lab in zip(rows, labels):
        if r["step"] in steps and (behaviour is None or lab.get(behaviour) is want):
            out.append({"step": r["step"], "prompt": (r.get("prompt") or "")[-300:], "response": r["response"][:max_chars],
                        "correct": bool(r["correct"]), "length": int(r["length"]), "labels": dict(lab)})
            if len(out) >= k:
                break
    return out


def aha_moments(rows: list[dict], labels: Sequence[Labels], per_step: list[dict], *, alpha: float = 0.01,
                min_rise: float = 0.05, seed: int = 0) -> dict[str, Any]:
    """`detect_rise` on the per-step ratio of each `AHA_BEHAVIOURS` behaviour, with example
    responses from just before the change (without the behaviour) and from the change on (with it)."""
    out = {}
    for b in AHA_BEHAVIOURS:
        pts = [(p["step"], p[b]) for p in per_step if p.get(b) is not None]
        cp = detect_rise([v for _, v in pts], [s for s, _ in pts], alpha=alpha, min_rise=min_rise, seed=seed)
        rec = cp.to_dict()
        if cp.step is not None:
            all_steps = [s for s, _ in pts]
            before = set(all_steps[max(0, cp.index - 3):cp.index])
            after = set(all_steps[cp.index:cp.index + 3]) if cp.found else set(all_steps[cp.index:])
            rec["examples_before"] = _examples(rows, labels, before, b, False)
            rec["examples_after"] = _examples(rows, labels, after, b, True)
        out[b] = rec
    return out


def length_rise(per_step: list[dict], *, alpha: float = 0.01, rel_rise: float = 0.1, seed: int = 0) -> dict[str, Any]:
    """The same change-point test on the mean response length per step (tokens): the step the
    responses got clearly longer, when they did (a rise of at least ``rel_rise`` of the first
    three steps' mean)."""
    xs = [p["mean_length"] for p in per_step]
    start = float(np.mean(xs[:3])) if xs else 0.0
    return detect_rise(xs, [p["step"] for p in per_step], alpha=alpha, min_rise=max(rel_rise * start, 1e-9),
                       seed=seed).to_dict()


def _write_labels(path: Path, rows: list[dict], labels: Sequence[Labels]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    cols = {"step": [int(r["step"]) for r in rows], "set": [r.get("set", "train") for r in rows],
            "group": [int(r["group"]) for r in rows], "sample": [int(r["sample"]) for r in rows],
            "length": [int(r["length"]) for r in rows], "correct": [bool(r["correct"]) for r in rows]}
    for b in BEHAVIOURS:
        cols[b] = [lab.get(b) for lab in labels]
    with atomic_path(path) as tmp:
        pq.write_table(pa.table(cols), str(tmp))


def analyze_run(run_dir: str | Path, judges: Sequence[Any], *, sample_per_step: Optional[int] = None,
                alpha: float = 0.01, min_rise: float = 0.05, seed: int = 0,
                log=print) -> dict[str, Any]:
    """Judge the saved rollouts of ``run_dir`` with each of ``judges`` (the first is the primary,
    whose labels give the ratios and the aha moment) and write ``RUN/analysis/``; returns the analysis."""
    run_dir = Path(run_dir)
    train_rows = _sample(R.read_run(run_dir), sample_per_step, seed)
    eval_rows = _sample(R.read_run(run_dir, evaluations=True), sample_per_step, seed)
    if not train_rows and not eval_rows:
        raise FileNotFoundError(f"{run_dir} has no saved rollouts (RUN/rollouts/*.parquet; tracking.save_rollouts)")
    out_dir = run_dir / "analysis"
    out_dir.mkdir(exist_ok=True)
    result: dict[str, Any] = {"run_dir": str(run_dir), "judges": {}, "sample_per_step": sample_per_step,
                              "responses": {"train": len(train_rows), "eval": len(eval_rows)}}
    all_labels: dict[str, list[Labels]] = {}
    for judge in judges:
        log(f"analyze: {judge.name} judge on {len(train_rows)} training and {len(eval_rows)} evaluation responses")
        labels = judge.label([r["response"] for r in train_rows + eval_rows])
        all_labels[judge.name] = labels
        tl, el = labels[:len(train_rows)], labels[len(train_rows):]
        train = summarise(train_rows, tl) if train_rows else None
        rec: dict[str, Any] = {"stats": judge.stats(), "train": train,
                               "eval": summarise(eval_rows, el) if eval_rows else None}
        if train:
            rec["aha"] = aha_moments(train_rows, tl, train["per_step"], alpha=alpha, min_rise=min_rise, seed=seed)
            result.setdefault("length_rise", length_rise(train["per_step"], alpha=alpha, seed=seed))
        result["judges"][judge.name] = rec
        _write_labels(out_dir / f"labels_{judge.name}.parquet", train_rows + eval_rows, labels)
    names = list(all_labels)
    if len(names) >= 2:
        result["agreement"] = {f"{a}~{b}": agreement(all_labels[a], all_labels[b])
                               for i, a in enumerate(names) for b in names[i + 1:]}
    result["primary"] = names[0]
    write_json_atomic(out_dir / "analysis.json", result, indent=2, sort_keys=True, default=str)
    return result


def format_analysis(result: dict[str, Any]) -> str:
    """A few terminal lines: overall ratios per judge, parse failures, aha moments, agreement."""
    lines = []
    for name, rec in result["judges"].items():
        part = rec["train"] or rec["eval"]
        ratios = ", ".join(f"{b} {v:.3f}" if v is not None else f"{b} -" for b, v in part["overall"].items())
        st = rec["stats"]
        extra = (f"; {st.get('parse_failures', 0)} parse failures, {st.get('failed', 0)} failed requests, "
                 f"{st.get('cached', 0)} cached, {st.get('retries', 0)} retries") if name != "rules" else ""
        lines.append(f"{name}: {ratios}{extra}")
        for b, cp in (rec.get("aha") or {}).items():
            lines.append(f"  aha ({b}): {cp['reason']}")
    if result.get("length_rise"):
        lines.append(f"response length: {result['length_rise']['reason']}")
    for pair, ag in (result.get("agreement") or {}).items():
        lines.append(f"agreement {pair}: " + ", ".join(
            f"{b} {v['agreement']:.2f}" + (f" (kappa {v['kappa']:.2f})" if v["kappa"] is not None else "")
            for b, v in ag.items() if v["agreement"] is not None))
    return "\n".join(lines)
