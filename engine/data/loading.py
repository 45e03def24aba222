"""Reading a run's prompt sets: training and validation data, and the evaluation benchmarks."""

from __future__ import annotations

from typing import Any, Callable

from engine.data import prompts as P


def load_prompts(path: str, spec: Any, tokenizer: Any, which: str, log: Callable[[str], None]) -> P.PromptSet:
    """Read, select and tokenize ``path`` ('synthetic' generates the built-in arithmetic rows)."""
    d = spec.data
    if path == "synthetic":
        from engine.data.synthetic import generate_rows

        size = d.synthetic.size if which == "train" else d.synthetic.val_size
        rows = generate_rows(size, list(d.synthetic.levels), seed=spec.seed + (0 if which == "train" else 1))
    else:
        rows = P.read_rows(path)
    template = P.template_text(d.prompt_template, d.custom_template)
    ps = P.build_prompt_set(rows, tokenizer, template, d.max_prompt_length, d.prompt_key, d.levels, d.answer_key)
    r = ps.report
    log(f"data ({which}): {r['kept']}/{r['rows']} prompts kept; {r['bad_rows']} bad rows"
        + (f" {r['bad_row_reasons']}" if r['bad_rows'] else "")
        + f", {r['outside_levels']} outside levels, {r['too_long']} over {d.max_prompt_length} tokens"
        + f" (longest {r['longest_prompt_tokens']})")
    return ps


def load_benchmarks(spec: Any, tokenizer: Any, log: Callable[[str], None]) -> dict[str, P.PromptSet]:
    """The prompt sets of ``evaluation.benchmarks``, with the training template and prompt-length
    limit; what is left out is counted in each report."""
    from engine.data.benchmarks import benchmark_rows

    e, d = spec.evaluation, spec.data
    if not e.benchmarks:
        return {}
    template = P.template_text(d.prompt_template, d.custom_template)
    sets = {}
    for name in e.benchmarks:
        ps = P.build_prompt_set(benchmark_rows(name, e.data_dir), tokenizer, template, d.max_prompt_length)
        r = ps.report
        log(f"eval ({name}): {r['kept']}/{r['rows']} prompts kept; {r['bad_rows']} bad rows, "
            f"{r['too_long']} over {d.max_prompt_length} tokens")
        sets[name] = ps
    return sets
