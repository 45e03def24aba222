"""`engine report RUN [RUN ...] --out DIR`: one static HTML page with PNG plots, runs overlaid.

Everything lands in ``DIR`` (``index.html``, ``*.png``, ``report.json`` with the numbers shown), so
the folder reads offline and can be copied anywhere. Per run it reads ``metrics.jsonl``,
``plan.json``, ``summary.json`` and, when present, ``analysis/analysis.json`` (`engine analyze`;
the rule judge is run first when a run has saved rollouts but no analysis). Beside the plots: the
spec differences of each run against the first (`compiler.diff.diff_specs`) and example responses
at the key steps (first step, the aha step when one was found, last step).
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from engine.core.atomic import atomic_path, write_json_atomic, write_text_atomic
from engine.study.judge import BEHAVIOURS

#: (file stem, title, y label, metric keys plotted; several keys are drawn as separate lines).
PLOTS: tuple[tuple[str, str, str, tuple[str, ...]], ...] = (
    ("reward", "Training reward", "mean reward", ("reward/mean",)),
    ("accuracy", "Accuracy", "accuracy", ("reward/accuracy", "val/accuracy")),
    ("response_length", "Response length", "tokens", ("response_length/mean",)),
    ("clip_ratio", "Clip ratio (cut at the length limit)", "share of responses", ("response_length/clip_ratio",)),
    ("stopped_length", "Length of responses that stopped", "tokens", ("response_length/stopped_length",)),
    ("entropy", "Policy entropy", "nats / token", ("trainer/entropy",)),
    ("kl", "KL to the reference", "k3 estimate", ("trainer/kl",)),
)


def read_run(run_dir: str | Path, log: Callable[[str], None] = print) -> dict[str, Any]:
    """The files of one run folder the report uses (missing ones are None / empty)."""
    d = Path(run_dir)
    if not (d / "metrics.jsonl").exists():
        raise FileNotFoundError(f"{d} is not a run folder (no metrics.jsonl)")
    from engine.core.files import json_lines

    metrics, bad = [], []
    for _, rec, err in json_lines(d / "metrics.jsonl"):
        if err is None and isinstance(rec.get("step"), int):
            metrics.append(rec)
        else:
            bad.append(err or "no integer step")
    if bad:
        log(f"warning: {d / 'metrics.jsonl'}: {len(bad)} line(s) skipped ({'; '.join(bad[:3])})")

    def load(p: Path) -> Any:
        try:
            return json.loads(p.read_text()) if p.exists() else None
        except (ValueError, OSError) as e:  # UnicodeDecodeError is a ValueError
            log(f"warning: {p} is unreadable ({type(e).__name__}); left out of the report")
            return None

    return {"dir": d, "name": d.name, "metrics": metrics, "summary": load(d / "summary.json"),
            "analysis": load(d / "analysis" / "analysis.json"), "plan": (d / "plan.json").read_text()
            if (d / "plan.json").exists() else None}


def series(metrics: Sequence[dict], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of ``key`` over the records that have it."""
    pts = [(int(m["step"]), float(m[key])) for m in metrics if isinstance(m.get(key), (int, float))]
    return [s for s, _ in pts], [v for _, v in pts]


def spec_changes(first_plan: Optional[str], plan: Optional[str]) -> list[dict]:
    """Spec differences (path, a, b) of ``plan`` against ``first_plan`` (both plan.json texts)."""
    if not first_plan or not plan:
        return []
    from compiler.diff import diff_specs
    from compiler.plan import Plan

    return [c.to_dict() for c in diff_specs(Plan.from_json(first_plan).spec, Plan.from_json(plan).spec)]


def _plot(path: Path, title: str, ylabel: str, lines: list[tuple[str, list[int], list[float]]]) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = [ln for ln in lines if ln[1]]
    if not lines:
        return False
    fig, ax = plt.subplots(figsize=(5.2, 3.2), dpi=100)
    for label, xs, ys in lines:
        ax.plot(xs, ys, marker="o" if len(xs) <= 12 else None, markersize=3, linewidth=1.4, label=label)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("RL step", fontsize=9)
    ax.set_ylabel(ylabel, fontsize=9)
    ax.grid(alpha=0.3)
    ax.tick_params(labelsize=8)
    if len(lines) > 1:
        ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp)
    plt.close(fig)
    return True


def _eval_keys(metrics: Sequence[dict], suffix: str) -> list[str]:
    keys = sorted({k for m in metrics for k in m if k.endswith(suffix) and (k.startswith("eval/") or k.startswith("val/"))})
    return [k for k in keys if k.count("/") <= 2]


def _passk_keys(metrics: Sequence[dict]) -> list[str]:
    """Evaluation pass@k (``evaluation.samples`` > 1) and the training groups' pass@n."""
    return sorted({k for m in metrics for k in m if "/pass@" in k or k == "reward/pass_at_n"})


def build_report(run_dirs: Sequence[str | Path], out_dir: str | Path, log=print) -> dict[str, Any]:
    """Write the report of ``run_dirs`` into ``out_dir``; returns what ``report.json`` holds."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    runs = [read_run(d, log) for d in run_dirs]
    names = [r["name"] for r in runs]
    if len(set(names)) < len(names):  # two folders with one name: tell them apart by their parents
        names = [f"{Path(r['dir']).parent.name}/{r['name']}" for r in runs]
    for r, n in zip(runs, names):
        r["label"] = n
        if r["analysis"] is None:
            from engine.core.rollouts import step_files

            if step_files(r["dir"]):
                from engine.study.analyze import analyze_run
                from engine.study.judge import RuleJudge

                r["analysis"] = json.loads(json.dumps(analyze_run(r["dir"], [RuleJudge()], log=log), default=str))
    report: dict[str, Any] = {"runs": [], "plots": []}
    for stem, title, ylabel, keys in PLOTS:
        lines = []
        for r in runs:
            for k in keys:
                xs, ys = series(r["metrics"], k)
                lines.append((f"{r['label']} {k}" if len(keys) > 1 or len(runs) > 1 else k, xs, ys))
        if _plot(out / f"{stem}.png", title, ylabel, lines):
            report["plots"].append({"file": f"{stem}.png", "title": title,
                                    "series": {lab: {"steps": xs, "values": ys} for lab, xs, ys in lines if xs}})
    # per-benchmark accuracy and pass@k
    for stem, title, ylabel, pick in (("benchmarks", "Accuracy per evaluation set", "accuracy",
                                       lambda m: _eval_keys(m, "/accuracy")),
                                      ("pass_at_k", "pass@k", "pass@k", _passk_keys)):
        lines = []
        for r in runs:
            for k in pick(r["metrics"]):
                xs, ys = series(r["metrics"], k)
                lines.append((f"{r['label']} {k}" if len(runs) > 1 else k, xs, ys))
        if _plot(out / f"{stem}.png", title, ylabel, lines):
            report["plots"].append({"file": f"{stem}.png", "title": title,
                                    "series": {lab: {"steps": xs, "values": ys} for lab, xs, ys in lines if xs}})
    # behaviour ratios (primary judge) and the keyword baseline
    lines = []
    for r in runs:
        a = r["analysis"]
        if a:
            rec = a["judges"][a["primary"]]
            per = (rec.get("train") or {}).get("per_step") or []
            for b in BEHAVIOURS:
                pts = [(p["step"], p[b]) for p in per if p.get(b) is not None]
                lines.append((f"{r['label']} {b}" if len(runs) > 1 else b, [s for s, _ in pts], [v for _, v in pts]))
        xs, ys = series(r["metrics"], "behaviour/reflection_ratio")
        lines.append((f"{r['label']} keyword reflection" if len(runs) > 1 else "keyword reflection (baseline)", xs, ys))
    if _plot(out / "behaviours.png", "Behaviour ratios (training responses)", "share of responses", lines):
        report["plots"].append({"file": "behaviours.png", "title": "Behaviour ratios (training responses)",
                                "series": {lab: {"steps": xs, "values": ys} for lab, xs, ys in lines if xs}})
    for r in runs:
        s = r["summary"] or {}
        a = r["analysis"]
        rec = a["judges"][a["primary"]] if a else None
        report["runs"].append({
            "label": r["label"], "dir": str(r["dir"]), "steps": len([m for m in r["metrics"] if "reward/mean" in m]),
            "reward_first": s.get("reward_first"), "reward_last": s.get("reward_last"),
            "accuracy_first": s.get("accuracy_first"), "accuracy_last": s.get("accuracy_last"),
            "val_accuracy_last": s.get("val_accuracy_last"), "wall_time_s": s.get("wall_time_s"),
            "spec_changes": spec_changes(runs[0]["plan"], r["plan"]),
            "aha": {b: {k: cp.get(k) for k in ("found", "step", "before", "after", "p_value", "confidence", "reason")}
                    for b, cp in ((rec or {}).get("aha") or {}).items()},
            "examples": _key_examples(r, rec, (a or {}).get("length_rise")),
            "length_rise": {k: (a or {}).get("length_rise", {}).get(k)
                            for k in ("found", "step", "before", "after", "p_value", "reason")} if a else None,
            "judges": sorted(a["judges"]) if a else [],
            "agreement": (a or {}).get("agreement"),
        })
    write_json_atomic(out / "report.json", report, indent=2, default=str)
    write_text_atomic(out / "index.html", render_html(report))
    return report


def _key_examples(run: dict, rec: Optional[dict], length_rise: Optional[dict] = None, per_step: int = 2) -> list[dict]:
    """Responses at the first step, the aha step(s) found, the step responses got longer (when
    found) and the last step (from the saved rollouts)."""
    from engine.core.rollouts import read_rollouts, step_files

    files = step_files(run["dir"])
    if not files:
        return []
    steps = sorted(files)
    picks = [("first step", steps[0])]
    for b, cp in ((rec or {}).get("aha") or {}).items():
        if cp.get("found") and cp.get("step") in files:
            picks.append((f"aha: {b}", cp["step"]))
    if length_rise and length_rise.get("found") and length_rise.get("step") in files:
        picks.append(("responses get longer", length_rise["step"]))
    picks.append(("last step", steps[-1]))
    out = []
    for why, step in picks:
        rows = read_rollouts(files[step])
        # a correct and a wrong response of the step, when it has both
        chosen = [r for r in rows if r["correct"]][:1] + [r for r in rows if not r["correct"]][:1]
        for r in (chosen or rows[:per_step])[:per_step]:
            out.append({"why": why, "step": step, "prompt": r["prompt"][-300:], "response": r["response"][:800],
                        "reward": r["reward"], "correct": r["correct"], "length": r["length"],
                        "finish_reason": r["finish_reason"]})
    return out


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3f}"
    return html.escape(str(v))


def render_html(report: dict[str, Any]) -> str:
    """The page: summary table, spec differences, the plots, aha moments and example responses.
    All model text is HTML-escaped (it is untrusted)."""
    e = html.escape
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>zero-RL report</title><style>",
             "body{font-family:sans-serif;margin:20px;max-width:1200px}table{border-collapse:collapse;margin:8px 0}"
             "td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}th{background:#f3f3f3}"
             ".plots{display:flex;flex-wrap:wrap;gap:8px}.plots figure{margin:0}.plots img{width:380px}"
             "figcaption{font-size:12px;color:#555}pre{white-space:pre-wrap;background:#f8f8f8;padding:6px;"
             "font-size:12px;max-height:220px;overflow:auto}.ok{color:#060}.bad{color:#a00}",
             "</style></head><body><h1>zero-RL report</h1>"]
    parts.append("<h2>Runs</h2><table><tr><th>run</th><th>steps</th><th>reward first &rarr; last</th>"
                 "<th>accuracy first &rarr; last</th><th>val accuracy</th><th>wall time (s)</th>"
                 "<th>aha (verification / backtracking)</th><th>spec vs first run</th></tr>")
    for r in report["runs"]:
        aha = " / ".join(f"step {a['step']} (p={a['p_value']:.3g})" if a.get("found") else "not found"
                         for a in r["aha"].values()) or "-"
        diff = "<br>".join(f"{e(c['path'])}: {e(str(c['a']))} &rarr; {e(str(c['b']))}" for c in r["spec_changes"]) \
            or ("(first run)" if r is report["runs"][0] else "same spec")
        parts.append(f"<tr><td>{e(r['label'])}</td><td>{r['steps']}</td><td>{_fmt(r['reward_first'])} &rarr; "
                     f"{_fmt(r['reward_last'])}</td><td>{_fmt(r['accuracy_first'])} &rarr; {_fmt(r['accuracy_last'])}"
                     f"</td><td>{_fmt(r['val_accuracy_last'])}</td><td>{_fmt(r['wall_time_s'])}</td><td>{aha}</td>"
                     f"<td>{diff}</td></tr>")
    parts.append("</table><h2>Plots</h2><div class='plots'>")
    for p in report["plots"]:
        parts.append(f"<figure><img src='{e(p['file'])}' alt='{e(p['title'])}'><figcaption>{e(p['title'])}"
                     "</figcaption></figure>")
    parts.append("</div>")
    for r in report["runs"]:
        parts.append(f"<h2>{e(r['label'])}</h2>")
        for b, a in r["aha"].items():
            parts.append(f"<p><b>aha ({e(b)})</b>: {e(a['reason'] or '')}</p>")
        if r.get("length_rise") and r["length_rise"].get("reason"):
            parts.append(f"<p><b>response length</b>: {e(r['length_rise']['reason'])}</p>")
        if r.get("agreement"):
            for pair, ag in r["agreement"].items():
                parts.append(f"<p>judge agreement {e(pair)}: " + ", ".join(
                    f"{e(b)} {_fmt(v['agreement'])}" for b, v in ag.items()) + "</p>")
        for x in r["examples"]:
            cls = "ok" if x["correct"] else "bad"
            parts.append(f"<p><b>{e(x['why'])}</b> (step {x['step']}, {x['length']} tokens, {e(x['finish_reason'])}, "
                         f"<span class='{cls}'>{'correct' if x['correct'] else 'wrong'}</span>)</p>"
                         f"<pre>{e(x['prompt'])}<b>{e(x['response'])}</b></pre>")
    parts.append("</body></html>")
    return "".join(parts)
