"""`engine data simplerl`, `engine analyze`, `engine report` (dispatched from `engine.cli`).

    engine data simplerl --gsm8k FILE --math DIR|FILE --out DIR [--benchmarks DIR] [--size N] [--val-size N]
    engine analyze RUN_DIR [--judge rules] [--judge-url URL --judge-model NAME] [--sample-per-step N]
    engine report RUN_DIR [RUN_DIR ...] --out DIR

Exit codes: 0 done, 1 failed (missing inputs, unreachable judge), 2 usage.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Sequence


def data_command(argv: Sequence[str]) -> int:
    """`engine data simplerl ...`."""
    p = argparse.ArgumentParser(prog="engine data", description="Prepare training data.")
    sub = p.add_subparsers(dest="what", required=True)
    s = sub.add_parser("simplerl", help="SimpleRL-Zoo easy/medium/hard splits + val, verl-style parquet")
    s.add_argument("--gsm8k", help="GSM8K train (.jsonl or .parquet with question, answer)")
    s.add_argument("--math", help="MATH release folder (**/*.json) or a .jsonl of MATH rows")
    s.add_argument("--out", required=True, help="output folder (easy/medium/hard/val.parquet, report.json)")
    s.add_argument("--benchmarks", default="../shared/data/benchmarks",
                   help="folder of benchmark .jsonl files held out of every split (default: %(default)s)")
    s.add_argument("--size", type=int, default=8000, help="rows per training split (0 = all; default %(default)s)")
    s.add_argument("--val-size", type=int, default=500, help="validation rows (default %(default)s)")
    s.add_argument("--seed", type=int, default=0)
    try:
        args = p.parse_args(list(argv))
    except SystemExit as e:
        return int(e.code or 0)
    if not args.gsm8k and not args.math:
        print("engine data simplerl: give --gsm8k and/or --math", file=sys.stderr)
        return 2
    missing = [f"--{k} {v}" for k, v in (("gsm8k", args.gsm8k), ("math", args.math)) if v and not Path(v).exists()]
    if missing:
        print("engine data simplerl: not found: " + ", ".join(missing), file=sys.stderr)
        return 1
    from engine.study.splits import format_report, prepare

    try:
        report = prepare(args.gsm8k, args.math, args.out, args.benchmarks, size=args.size, val_size=args.val_size,
                         seed=args.seed)
    except (FileNotFoundError, ValueError) as e:  # ValueError: a data file that cannot be read, named
        print(f"engine data simplerl: {e}", file=sys.stderr)
        return 1
    print(format_report(report))
    return 0


def analyze_command(argv: Sequence[str]) -> int:
    """`engine analyze RUN_DIR ...`."""
    p = argparse.ArgumentParser(prog="engine analyze", description="Behaviours, judges and the aha moment of a run.")
    p.add_argument("run_dir")
    p.add_argument("--judge", choices=["rules"], default="rules", help="the offline judge (always run)")
    p.add_argument("--judge-url", help="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1 (adds the LLM judge)")
    p.add_argument("--judge-model", help="model name for --judge-url")
    p.add_argument("--judge-key-env", default="OPENAI_API_KEY", help="env variable holding the API key, if any")
    p.add_argument("--batch-size", type=int, default=8, help="LLM requests in flight (default %(default)s)")
    p.add_argument("--retries", type=int, default=3, help="extra attempts per LLM request (default %(default)s)")
    p.add_argument("--judge-timeout-s", type=float, default=120.0,
                   help="most seconds one LLM request may take, connect to last byte (default %(default)s)")
    p.add_argument("--judge-connect-timeout-s", type=float, default=10.0,
                   help="most seconds to open a connection (default %(default)s)")
    p.add_argument("--judge-deadline-s", type=float, default=3600.0,
                   help="most seconds for all LLM judging; then the rest counts as failed (default %(default)s)")
    p.add_argument("--sample-per-step", type=int, default=None, help="judge at most N responses per step")
    p.add_argument("--alpha", type=float, default=0.01, help="aha test level (default %(default)s)")
    p.add_argument("--min-rise", type=float, default=0.05, help="smallest rise in ratio that counts (default %(default)s)")
    try:
        args = p.parse_args(list(argv))
    except SystemExit as e:
        return int(e.code or 0)
    if args.judge_url and not args.judge_model:
        print("engine analyze: --judge-url needs --judge-model", file=sys.stderr)
        return 2
    from engine.study.analyze import analyze_run, format_analysis
    from engine.study.judge import LLMJudge, RuleJudge

    judges = [RuleJudge()]
    if args.judge_url:
        cache = Path(args.run_dir) / "analysis" / "judge_cache.jsonl"
        cache.parent.mkdir(parents=True, exist_ok=True)
        try:
            judges.append(LLMJudge(args.judge_url, args.judge_model, api_key=os.environ.get(args.judge_key_env),
                                   batch_size=args.batch_size, retries=args.retries, cache=cache,
                                   timeout_s=args.judge_timeout_s, connect_timeout_s=args.judge_connect_timeout_s,
                                   deadline_s=args.judge_deadline_s))
        except ValueError as e:
            print(f"engine analyze: {e}", file=sys.stderr)
            return 2
    try:
        result = analyze_run(args.run_dir, judges, sample_per_step=args.sample_per_step, alpha=args.alpha,
                             min_rise=args.min_rise, log=lambda m: print(m, file=sys.stderr))
    except (FileNotFoundError, ValueError) as e:  # ValueError: a data file that cannot be read, named
        print(f"engine analyze: {e}", file=sys.stderr)
        return 1
    print(format_analysis(result))
    written = Path(args.run_dir) / "analysis" / "analysis.json"
    llm = result["judges"].get("llm")
    if llm:  # the LLM judge's verdicts are what was asked for: say plainly when some or all are missing
        st = llm["stats"]
        asked = st["responses"] - st["cached"]
        why = "; ".join(st.get("errors", [])[:2])
        if asked and not st["labelled"] and not st["cached"]:
            print(f"engine analyze: no verdict came back from {args.judge_url}: {st['failed']} request(s) failed"
                  f"{' (deadline reached)' if st.get('deadline_hit') else ''}, {st['parse_failures']} answer(s) "
                  f"unparseable{': ' + why if why else ''}", file=sys.stderr)
            return 1
        if st["failed"]:
            print(f"engine analyze: {st['failed']} of {asked} LLM request(s) got no answer"
                  f"{' (deadline reached)' if st.get('deadline_hit') else ''}{': ' + why if why else ''}; "
                  f"their labels are empty in {written}; run again to ask for them (answers are cached)",
                  file=sys.stderr)
            return 1
    print(f"written: {written}", file=sys.stderr)
    return 0


def report_command(argv: Sequence[str]) -> int:
    """`engine report RUN_DIR [RUN_DIR ...] --out DIR`."""
    p = argparse.ArgumentParser(prog="engine report", description="Static HTML report with PNG plots.")
    p.add_argument("run_dirs", nargs="+")
    p.add_argument("--out", default="report", help="output folder (default %(default)s)")
    try:
        args = p.parse_args(list(argv))
    except SystemExit as e:
        return int(e.code or 0)
    from engine.study.report import build_report

    try:
        report = build_report(args.run_dirs, args.out, log=lambda m: print(m, file=sys.stderr))
    except (FileNotFoundError, ValueError) as e:  # ValueError: a data file that cannot be read, named
        print(f"engine report: {e}", file=sys.stderr)
        return 1
    print(f"report: {Path(args.out) / 'index.html'} ({len(report['plots'])} plots, {len(report['runs'])} runs)")
    return 0
