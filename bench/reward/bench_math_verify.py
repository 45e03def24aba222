"""Benchmark the rule-based reward against math-verify on the same pairs, in one run.

    pip install math-verify          # benchmark-only; not a project dependency
    python bench/reward/bench_math_verify.py [--workers N] [--out bench/results/reward]

Reports, for the labelled set (tests/reward/cases: hand-written + derived from ../shared/data):
accuracy, false positives, false negatives (adversarial FP separately) for ours and math-verify,
and their agreement; and throughput (verifications per second) of ours single-process, ours with
the process pool, and math-verify single-process, on the labelled set and on "typical" pairs
(real worked solutions from MATH500 / Minerva as responses, with their own and a shifted gold).
It also grades the kind corpus of issue 9 (other graders' test-suite facts, hand-written cases
by kind with a reward-hacking battery, and cases derived from MATH500 / OlympiadBench golds) and
reports accuracy, false positives and false negatives per kind for both graders; and the
whole-process CPU time of ``engine grade`` (as a user runs it, default options) against a
math-verify script on the same few thousand typical rows.
Writes ``<out>.md`` and ``<out>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import tempfile
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "reward" / "cases"))

from derive import _rows, corpus_cases, load_cases  # noqa: E402

from engine.reward import Grader, RewardConfig  # noqa: E402


def clear_caches() -> None:
    from engine.reward import equivalence, normalize
    normalize.normalize.cache_clear()
    equivalence._parse.cache_clear()


def run_ours(responses, golds, workers: int, timeout_s: float):
    """(results, seconds, stats) for a fresh Grader; a pool is started before timing."""
    clear_caches()
    g = Grader(RewardConfig(workers=workers, timeout_s=timeout_s))
    try:
        if workers:
            # start the pool outside the timed region (it lives across training steps)
            g.grade_batch([f"\\boxed{{x^{k}+1}}" for k in range(workers)], ["x+1"] * workers)
            g._cache.clear()
            clear_caches()
        t = time.perf_counter()
        res = g.grade_batch(responses, golds)
        dt = time.perf_counter() - t
        return res, dt, g.stats()
    finally:
        g.close()


def run_math_verify(responses, golds):
    from math_verify import parse, verify
    out = []
    errors = 0
    t = time.perf_counter()
    for resp, gold in zip(responses, golds):
        try:
            gp = parse(f"${gold}$")
            if not gp:
                gp = parse(gold)
            pp = parse(resp)
            out.append(bool(verify(gp, pp)))
        except Exception:  # noqa: BLE001
            errors += 1
            out.append(False)
    return out, time.perf_counter() - t, errors


def score_by_kind(cases, ours, mv):
    """Per kind: n, and for each grader accuracy, false positives, false negatives."""
    out = defaultdict(lambda: Counter())
    for c, a, b in zip(cases, ours, mv):
        t = out[c["kind"]]
        t["n"] += 1
        for name, v in (("ours", a), ("mv", b)):
            t[f"{name}_ok"] += v == c["expected"]
            t[f"{name}_fp"] += v and not c["expected"]
            t[f"{name}_fn"] += (not v) and c["expected"]
    return {k: dict(v) for k, v in sorted(out.items())}


_MV_SCRIPT = """
import json, sys
from math_verify import parse, verify
n = ok = 0
with open(sys.argv[1]) as f:
    for line in f:
        r = json.loads(line)
        try:
            g = parse("$" + r["ground_truth"] + "$") or parse(r["ground_truth"])
            ok += bool(verify(g, parse(r["response"])))
        except Exception:
            pass
        n += 1
print(n, ok)
"""


def child_cpu(cmd, env=None) -> tuple:
    """(CPU seconds user+sys of the command and everything it waited for, wall seconds, stdout)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if p.returncode not in (0, 1):
        raise RuntimeError(f"{cmd[:4]} failed: {p.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return cpu, wall, p.stdout.strip()


def whole_process_cpu(resp, gold):
    """``engine grade`` (default options) vs a math-verify script, as separate processes."""
    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / "rows.jsonl"
        with open(src, "w") as f:
            for r, g in zip(resp, gold):
                f.write(json.dumps({"response": r, "ground_truth": g}) + "\n")
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        ours = child_cpu([sys.executable, "-m", "engine.cli", "grade", str(src), "--out",
                          str(Path(d) / "out.jsonl")], env)
        mv = child_cpu([sys.executable, "-c", _MV_SCRIPT, str(src)], env)
    return {"rows": len(resp), "ours_cpu_s": ours[0], "ours_wall_s": ours[1], "ours_summary": ours[2],
            "mv_cpu_s": mv[0], "mv_wall_s": mv[1], "mv_summary": mv[2]}


def typical_pairs():
    """Real worked solutions as responses: MATH500 (own gold and a shifted gold), GSM8K, Minerva,
    OlympiadBench (own gold, unboxed prose endings included). About 3,300 pairs."""
    resp, gold = [], []
    m5 = _rows("math500.jsonl")
    for k, r in enumerate(m5):
        resp.append(r["solution"])
        gold.append(r["answer"])
        resp.append(r["solution"])
        gold.append(m5[(k + 1) % len(m5)]["answer"])
    for r in _rows("gsm8k.jsonl"):
        text, _, ans = r["answer"].rpartition("####")
        resp.append(text.strip() + f"\nThe answer is {ans.strip()}.")
        gold.append(ans.strip())
    from engine.reward.extract import last_boxed
    for r in _rows("minerva_math.jsonl"):   # no answer field: the gold is the solution's box
        g = last_boxed(r["solution"])
        if g:
            resp.append(r["solution"])
            gold.append(g)
    for r in _rows("olympiadbench.jsonl"):
        resp.append("\n".join(r["solution"]) if isinstance(r["solution"], list) else str(r["solution"]))
        gold.append(", ".join(x.strip().strip("$") for x in r["final_answer"]))
    return resp, gold

def score(pred, cases):
    fp = sum(1 for p, c in zip(pred, cases) if p and not c["expected"])
    fn = sum(1 for p, c in zip(pred, cases) if not p and c["expected"])
    adv_fp = sum(1 for p, c in zip(pred, cases) if p and c["adversarial"])
    acc = 1 - (fp + fn) / len(cases)
    return {"accuracy": acc, "fp": fp, "fn": fn, "adversarial_fp": adv_fp}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=min(16, len(os.sched_getaffinity(0))))
    ap.add_argument("--timeout-s", type=float, default=10.0)
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "reward"))
    args = ap.parse_args()
    try:
        import math_verify  # noqa: F401
        from importlib.metadata import version
        mv_version = version("math-verify")
    except ImportError:
        print("math-verify is not installed: pip install math-verify", file=sys.stderr)
        return 2

    cases = load_cases()
    if len(cases) < 500:
        print(f"only {len(cases)} cases: is ../shared/data present?", file=sys.stderr)
    responses = [c["response"] for c in cases]
    golds = [c["ground_truth"] for c in cases]
    print(f"labelled set: {len(cases)} cases ({sum(c['adversarial'] for c in cases)} adversarial)")

    ours1, t_ours1, st1 = run_ours(responses, golds, 0, args.timeout_s)
    print(f"ours single-process: {t_ours1:.2f}s  {st1}")
    oursp, t_oursp, stp = run_ours(responses, golds, args.workers, args.timeout_s)
    print(f"ours pool({args.workers}): {t_oursp:.2f}s  {stp}")
    mv, t_mv, mv_err = run_math_verify(responses, golds)
    print(f"math-verify: {t_mv:.2f}s ({mv_err} exceptions)")

    our_pred = [r.correct for r in ours1]
    pool_pred = [r.correct for r in oursp]
    assert our_pred == pool_pred or True  # timeouts may differ under load; reported below
    pool_mismatch = sum(a != b for a, b in zip(our_pred, pool_pred))
    s_ours, s_mv = score(our_pred, cases), score(mv, cases)
    agree = sum(a == b for a, b in zip(our_pred, mv)) / len(cases)

    by_type = defaultdict(lambda: Counter())
    for c, a, b in zip(cases, our_pred, mv):
        t = by_type[c["type"]]
        t["n"] += 1
        t["ours_ok"] += a == c["expected"]
        t["mv_ok"] += b == c["expected"]
    disagreements = [
        {"source": c["source"], "type": c["type"], "ground_truth": c["ground_truth"],
         "extracted": r.extracted, "expected": c["expected"], "ours": a, "math_verify": b}
        for c, r, a, b in zip(cases, ours1, our_pred, mv) if a != b
    ]

    t_resp, t_gold = typical_pairs()
    _, t_typ1, st_typ1 = run_ours(t_resp, t_gold, 0, args.timeout_s)
    _, t_typp, st_typp = run_ours(t_resp, t_gold, args.workers, args.timeout_s)
    mv_typ, t_typmv, _ = run_math_verify(t_resp, t_gold)
    ours_typ_res, _, _ = run_ours(t_resp, t_gold, 0, args.timeout_s)
    agree_typ = sum(r.correct == m for r, m in zip(ours_typ_res, mv_typ)) / len(t_resp)

    # the pairs the fast path cannot settle (they go to the pool)
    from engine.reward.equivalence import quick_verdict
    from engine.reward.extract import extract_answer
    sym = [(r, g) for r, g in zip(responses, golds)
           if (a := extract_answer(r)) is not None and quick_verdict(a, g) is None]
    s_resp, s_gold = [r for r, _ in sym], [g for _, g in sym]
    _, t_sym1, _ = run_ours(s_resp, s_gold, 0, args.timeout_s)
    _, t_symp, _ = run_ours(s_resp, s_gold, args.workers, args.timeout_s)
    _, t_symmv, _ = run_math_verify(s_resp, s_gold)

    # the kind corpus (issue 9)
    corpus = corpus_cases()
    c_resp = [c["response"] for c in corpus]
    c_gold = [c["ground_truth"] for c in corpus]
    c_ours, t_c1, _ = run_ours(c_resp, c_gold, 0, args.timeout_s)
    c_pool, _, c_pool_st = run_ours(c_resp, c_gold, args.workers, args.timeout_s)
    c_mv, t_cmv, c_mv_err = run_math_verify(c_resp, c_gold)
    c_our_pred = [r.correct for r in c_ours]
    corpus_result = {
        "cases": len(corpus), "ours": score(c_our_pred, corpus), "math_verify": score(c_mv, corpus),
        "by_kind": score_by_kind(corpus, c_our_pred, c_mv),
        "by_origin": {},
        "pool_vs_single_mismatches": sum(a.correct != b.correct for a, b in zip(c_ours, c_pool)),
        "pool_timeouts": c_pool_st["timeouts"], "pool_errors": c_pool_st["errors"],
        "math_verify_exceptions": c_mv_err,
        "disagreements": [
            {"origin": c["origin"], "kind": c["kind"], "ground_truth": c["ground_truth"],
             "response": c["response"][-160:], "extracted": r.extracted, "expected": c["expected"],
             "ours": a, "math_verify": b}
            for c, r, a, b in zip(corpus, c_ours, c_our_pred, c_mv) if a != c["expected"] or b != c["expected"]],
    }
    for c, a, b in zip(corpus, c_our_pred, c_mv):
        src = c["origin"].split("@")[0].split(":")[0]
        t = corpus_result["by_origin"].setdefault(src, Counter())
        t["n"] += 1
        t["ours_ok"] += a == c["expected"]
        t["mv_ok"] += b == c["expected"]
    corpus_result["by_origin"] = {k: dict(v) for k, v in sorted(corpus_result["by_origin"].items())}
    print(f"kind corpus: {len(corpus)} cases, ours {corpus_result['ours']}, math-verify {corpus_result['math_verify']}")

    # whole-process CPU time of `engine grade` as a user runs it vs a math-verify script
    wp = whole_process_cpu(t_resp, t_gold)
    print(f"whole process on {wp['rows']} rows: engine grade {wp['ours_cpu_s']:.1f} CPU-s, "
          f"math-verify {wp['mv_cpu_s']:.1f} CPU-s")

    t = time.perf_counter()
    with Grader(RewardConfig(workers=args.workers)) as g:
        g.grade_batch([f"\\boxed{{x^{k}+1}}" for k in range(args.workers)], ["x+1"] * args.workers)
        pool_start = time.perf_counter() - t

    n, nt, ns = len(cases), len(t_resp), len(sym)
    rates = {
        "labelled": {"ours_single": n / t_ours1, "ours_pool": n / t_oursp, "math_verify_single": n / t_mv},
        "typical": {"ours_single": nt / t_typ1, "ours_pool": nt / t_typp, "math_verify_single": nt / t_typmv},
        "symbolic": {"ours_single": ns / t_sym1, "ours_pool": ns / t_symp, "math_verify_single": ns / t_symmv},
    }
    result = {
        "cases": n, "adversarial_cases": sum(c["adversarial"] for c in cases),
        "positives": sum(c["expected"] for c in cases),
        "ours": s_ours, "math_verify": s_mv, "agreement": agree,
        "typical_pairs": nt, "typical_agreement": agree_typ, "symbolic_pairs": ns,
        "pool_start_s": pool_start, "corpus": corpus_result, "whole_process": wp,
        "throughput_per_s": rates, "workers": args.workers,
        "ours_stats_single": st1, "ours_stats_typical": st_typ1,
        "pool_vs_single_mismatches": pool_mismatch,
        "math_verify_version": mv_version, "math_verify_exceptions": mv_err,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "by_type": {k: dict(v) for k, v in sorted(by_type.items())},
        "disagreements": disagreements,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
    out.with_suffix(".md").write_text(render_md(result))
    print(render_md(result, short=True))
    print(f"wrote {out.with_suffix('.md')} and {out.with_suffix('.json')}")
    return 0


def render_corpus(r: dict) -> list:
    c, wp = r["corpus"], r["whole_process"]
    o, m = c["ours"], c["math_verify"]
    typ = r["throughput_per_s"]["typical"]
    lines = [
        "## Kind corpus (issue 9)",
        "",
        f"{c['cases']} cases: facts from other graders' test suites (`tests/reward/cases/suites.jsonl`), "
        "hand-written cases by kind with a reward-hacking battery (`kinds.tsv`), and cases derived at run "
        "time from the MATH500 / OlympiadBench golds in `../shared/data`.",
        "",
        "| | ours | math-verify |",
        "|---|---|---|",
        f"| accuracy | {o['accuracy']:.2%} | {m['accuracy']:.2%} |",
        f"| false positives | {o['fp']} | {m['fp']} |",
        f"| false negatives | {o['fn']} | {m['fn']} |",
        f"| false positives on look-alikes | {o['adversarial_fp']} | {m['adversarial_fp']} |",
        f"| single-process throughput, typical pairs (/s) | {typ['ours_single']:,.0f} "
        f"({typ['ours_single'] / typ['math_verify_single']:.0f}x) | {typ['math_verify_single']:,.0f} |",
        f"| whole process on {wp['rows']:,} typical rows, CPU-s | {wp['ours_cpu_s']:.2f} "
        f"({wp['mv_cpu_s'] / max(wp['ours_cpu_s'], 1e-9):.0f}x less) | {wp['mv_cpu_s']:.2f} |",
        "",
        f"Pool run of the corpus: {c['pool_timeouts']} timeouts, {c['pool_errors']} errors, "
        f"{c['pool_vs_single_mismatches']} verdicts differing from the single-process run. "
        f"Whole process: `engine grade` with default options ({wp['ours_wall_s']:.1f} s wall) against a "
        f"math-verify script ({wp['mv_wall_s']:.1f} s wall), each a fresh `python` process; CPU time "
        "includes the interpreters' start and every worker process.",
        "",
        "| kind | cases | ours acc | ours FP | ours FN | math-verify acc | math-verify FP | math-verify FN |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for k, v in c["by_kind"].items():
        lines.append(f"| {k} | {v['n']} | {v.get('ours_ok', 0) / v['n']:.1%} | {v.get('ours_fp', 0)} | "
                     f"{v.get('ours_fn', 0)} | {v.get('mv_ok', 0) / v['n']:.1%} | {v.get('mv_fp', 0)} | "
                     f"{v.get('mv_fn', 0)} |")
    lines += ["", "By origin:", "", "| origin | cases | ours acc | math-verify acc |", "|---|---|---|---|"]
    for k, v in c["by_origin"].items():
        lines.append(f"| {k} | {v['n']} | {v.get('ours_ok', 0) / v['n']:.1%} | {v.get('mv_ok', 0) / v['n']:.1%} |")
    lines.append("")
    return lines


def render_corpus_errors(r: dict) -> list:
    esc = lambda s: str(s).replace("|", "\\|").replace("\n", " ")[:70]  # noqa: E731
    lines = ["", f"Kind corpus cases either grader gets wrong ({len(r['corpus']['disagreements'])}):", "",
             "| origin | kind | gold | response (tail) | extracted (ours) | expected | ours | math-verify |",
             "|---|---|---|---|---|---|---|---|"]
    for d in r["corpus"]["disagreements"]:
        lines.append(f"| {d['origin']} | {d['kind']} | `{esc(d['ground_truth'])}` | `{esc(d['response'])}` | "
                     f"`{esc(d['extracted'])}` | {d['expected']} | {d['ours']} | {d['math_verify']} |")
    return lines


def render_md(r: dict, short: bool = False) -> str:
    o, m = r["ours"], r["math_verify"]
    lab, typ = r["throughput_per_s"]["labelled"], r["throughput_per_s"]["typical"]
    sym = r["throughput_per_s"]["symbolic"]
    lines = [
        "# Reward verifier vs math-verify",
        "",
        f"`python bench/reward/bench_math_verify.py` (math-verify {r['math_verify_version']}, "
        f"pool of {r['workers']} workers; {r['machine']}).",
        "",
    ]
    lines += render_corpus(r)
    lines += [
        "## Earlier labelled set",
        "",
        f"Labelled set: {r['cases']} cases ({r['positives']} equivalent, {r['adversarial_cases']} "
        "adversarial look-alikes); hand-written (`tests/reward/cases/handwritten.tsv`) plus derived "
        "at run time from the benchmark answers in `../shared/data`.",
        "",
        "| | ours | math-verify |",
        "|---|---|---|",
        f"| accuracy | {o['accuracy']:.2%} | {m['accuracy']:.2%} |",
        f"| false positives | {o['fp']} | {m['fp']} |",
        f"| false negatives | {o['fn']} | {m['fn']} |",
        f"| false positives on adversarial subset | {o['adversarial_fp']} | {m['adversarial_fp']} |",
        f"| agreement (same verdict) | {r['agreement']:.2%} | |",
        "",
        "Throughput, verifications per second (extraction + verification, cold caches):",
        "",
        "| pairs | ours, 1 process | ours, pool | math-verify, 1 process | ours 1 proc / math-verify |",
        "|---|---|---|---|---|",
        f"| labelled set ({r['cases']}) | {lab['ours_single']:,.0f} | {lab['ours_pool']:,.0f} | "
        f"{lab['math_verify_single']:,.0f} | {lab['ours_single'] / lab['math_verify_single']:.0f}x |",
        f"| typical: real solutions ({r['typical_pairs']}) | {typ['ours_single']:,.0f} | {typ['ours_pool']:,.0f} | "
        f"{typ['math_verify_single']:,.0f} | {typ['ours_single'] / typ['math_verify_single']:.0f}x |",
        f"| symbolic: labelled pairs the fast path cannot settle ({r['symbolic_pairs']}) | "
        f"{sym['ours_single']:,.0f} | {sym['ours_pool']:,.0f} | {sym['math_verify_single']:,.0f} | "
        f"{sym['ours_single'] / sym['math_verify_single']:.0f}x |",
        "",
        f"Agreement on the typical pairs: {r['typical_agreement']:.2%}. Fast path (no sympy, no IPC): "
        f"{r['ours_stats_single']['fast_path']} of {r['cases']} labelled pairs, "
        f"{r['ours_stats_typical']['fast_path']} of {r['typical_pairs']} typical pairs. "
        f"Starting the pool of {r['workers']} workers (fresh interpreters importing sympy) took "
        f"{r['pool_start_s']:.1f} s, once per Grader; it is outside the timed regions.",
    ]
    if short:
        return "\n".join(lines) + "\n"
    lines += render_corpus_errors(r)
    lines += ["", "Accuracy by answer type:", "", "| type | cases | ours | math-verify |", "|---|---|---|---|"]
    for k, v in r["by_type"].items():
        lines.append(f"| {k} | {v['n']} | {v['ours_ok'] / v['n']:.1%} | {v['mv_ok'] / v['n']:.1%} |")
    lines += ["", f"Disagreements ({len(r['disagreements'])}; first 40):", "",
              "| source | gold | extracted (ours) | expected | ours | math-verify |", "|---|---|---|---|---|---|"]
    for d in r["disagreements"][:40]:
        esc = lambda s: str(s).replace("|", "\\|").replace("\n", " ")[:60]  # noqa: E731
        lines.append(f"| {d['source']} | `{esc(d['ground_truth'])}` | `{esc(d['extracted'])}` | "
                     f"{d['expected']} | {d['ours']} | {d['math_verify']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
