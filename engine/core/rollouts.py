"""Saved rollouts: every step's (and every evaluation's) responses as parquet in the run folder.

Layout (``RUN/rollouts/``):

* ``step_NNNNNN.parquet``: one row per response of RL step N (prompt, response, ground truth,
  extracted answer, reward, correct, finish reason, length in tokens, group = prompt index);
* ``eval_NNNNNN_<set>.parquet``: one row per evaluation sample of step N on ``<set>`` (``val``,
  or a benchmark name).

Each file is written to a temporary name and renamed, so a crash never leaves half a file. On
resume from checkpoint step S the files of steps after S are removed: the resumed run writes them
again from the same policy, so the folder always holds exactly one file per step. With
``keep_rollout_steps`` = K > 0 only the K most recent step files are kept (evaluation files are
always kept); 0 keeps every step.

The training loop calls `RolloutWriter.step` / `RolloutWriter.evaluation` with plain Python lists;
everything else lives here.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from engine.core.atomic import atomic_path

#: Columns of a step file, in order.
STEP_COLUMNS = ("step", "group", "sample", "prompt", "response", "ground_truth", "extracted", "reward", "correct",
                "finish_reason", "length", "data_source", "level")
_STEP_RE = re.compile(r"^step_(\d{6,})\.parquet$")
_EVAL_RE = re.compile(r"^eval_(\d{6,})_(.+)\.parquet$")


def _safe(name: str) -> str:
    """A file-name-safe form of an evaluation set name (``eval/aime24`` -> ``aime24``)."""
    name = name.split("/", 1)[1] if name.startswith("eval/") else name
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name) or "set"


def _rows_table(step: int, prompts: Sequence[str], responses: Sequence[str], ground_truths: Sequence[str],
                extracted: Sequence[Optional[str]], rewards: Sequence[float], correct: Sequence[bool],
                finish_reasons: Sequence[str], lengths: Sequence[int], group_size: int,
                data_sources: Optional[Sequence[str]], levels: Optional[Sequence[Optional[int]]]):
    """A pyarrow table of one batch. ``prompts`` has one entry per group (prompt); every other
    list one per response (``len(prompts) * group_size``)."""
    import pyarrow as pa

    n = len(responses)
    if len(prompts) * group_size != n:
        raise ValueError(f"{len(prompts)} prompts x {group_size} samples != {n} responses")
    for name, col in (("ground_truths", ground_truths), ("extracted", extracted), ("rewards", rewards),
                      ("correct", correct), ("finish_reasons", finish_reasons), ("lengths", lengths)):
        if len(col) != n:
            raise ValueError(f"{name}: {len(col)} values for {n} responses")
    per_group = lambda seq: [seq[i // group_size] for i in range(n)]  # noqa: E731
    cols = {
        "step": pa.array([step] * n, pa.int32()),
        "group": pa.array([i // group_size for i in range(n)], pa.int32()),
        "sample": pa.array([i % group_size for i in range(n)], pa.int32()),
        "prompt": pa.array(per_group(list(prompts)), pa.string()),
        "response": pa.array(list(responses), pa.string()),
        "ground_truth": pa.array([str(g) for g in ground_truths], pa.string()),
        "extracted": pa.array([None if e is None else str(e) for e in extracted], pa.string()),
        "reward": pa.array([float(r) for r in rewards], pa.float32()),
        "correct": pa.array([bool(c) for c in correct], pa.bool_()),
        "finish_reason": pa.array([str(f) for f in finish_reasons], pa.string()),
        "length": pa.array([int(x) for x in lengths], pa.int32()),
        "data_source": pa.array(per_group(list(data_sources)) if data_sources is not None else [None] * n, pa.string()),
        "level": pa.array(per_group(list(levels)) if levels is not None else [None] * n, pa.int32()),
    }
    return pa.table(cols)


def _write_atomic(table: Any, path: Path) -> None:
    import pyarrow.parquet as pq

    with atomic_path(path) as tmp:
        pq.write_table(table, str(tmp))


class RolloutWriter:
    """Writes ``RUN/rollouts/*.parquet``; see the module docstring.

    keep_steps: how many of the most recent step files to keep (0 = all). resume_step: the
    checkpoint step a resumed run starts from (files of later steps are removed); None for a new run.
    """

    def __init__(self, run_dir: str | Path, keep_steps: int = 0, resume_step: Optional[int] = None) -> None:
        self.dir = Path(run_dir) / "rollouts"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.keep_steps = int(keep_steps)
        for p in self.dir.iterdir():
            if p.name.startswith(".") and ".tmp-" in p.name:
                p.unlink()  # left by a crash mid-write
        if resume_step is not None:
            for p in list(self.dir.iterdir()):
                m = _STEP_RE.match(p.name) or _EVAL_RE.match(p.name)
                if m and int(m.group(1)) > resume_step:
                    p.unlink()

    def step(self, step: int, prompts: Sequence[str], responses: Sequence[str], ground_truths: Sequence[str],
             extracted: Sequence[Optional[str]], rewards: Sequence[float], correct: Sequence[bool],
             finish_reasons: Sequence[str], lengths: Sequence[int], group_size: int,
             data_sources: Optional[Sequence[str]] = None, levels: Optional[Sequence[Optional[int]]] = None) -> Path:
        """Save RL step ``step``'s rollouts (prompts: one per group); returns the file."""
        table = _rows_table(step, prompts, responses, ground_truths, extracted, rewards, correct, finish_reasons,
                            lengths, group_size, data_sources, levels)
        path = self.dir / f"step_{step:06d}.parquet"
        _write_atomic(table, path)
        if self.keep_steps > 0:
            steps = sorted(step_files(self.dir.parent))
            for s in steps[:-self.keep_steps]:
                (self.dir / f"step_{s:06d}.parquet").unlink(missing_ok=True)
        return path

    def evaluation(self, step: int, name: str, prompts: Sequence[str], responses: Sequence[str],
                   ground_truths: Sequence[str], extracted: Sequence[Optional[str]], rewards: Sequence[float],
                   correct: Sequence[bool], finish_reasons: Sequence[str], lengths: Sequence[int],
                   samples: int) -> Path:
        """Save the samples of one evaluation set (``val`` or a benchmark) at ``step``."""
        table = _rows_table(step, prompts, responses, ground_truths, extracted, rewards, correct, finish_reasons,
                            lengths, samples, None, None)
        path = self.dir / f"eval_{step:06d}_{_safe(name)}.parquet"
        _write_atomic(table, path)
        return path


class EvalCollector:
    """Gathers one evaluation set's batches (the loop evaluates in batches) for one `RolloutWriter.evaluation`."""

    def __init__(self) -> None:
        self.cols: dict[str, list] = {k: [] for k in ("prompts", "responses", "ground_truths", "extracted",
                                                       "rewards", "correct", "finish_reasons", "lengths")}

    def add(self, prompts: Sequence[str], responses: Sequence[str], graded: dict[str, list],
            ground_truths: Sequence[str], finish_reasons: Sequence[str], lengths: Sequence[int]) -> None:
        """One batch: ``graded`` is the reward workers' answer (reward, correct, extracted)."""
        c = self.cols
        c["prompts"] += list(prompts)
        c["responses"] += list(responses)
        c["ground_truths"] += list(ground_truths)
        c["extracted"] += list(graded.get("extracted") or [None] * len(responses))
        c["rewards"] += list(graded["reward"])
        c["correct"] += list(graded["correct"])
        c["finish_reasons"] += list(finish_reasons)
        c["lengths"] += list(lengths)

    def write(self, writer: Optional[RolloutWriter], step: int, name: str, samples: int) -> Optional[Path]:
        if writer is None or not self.cols["responses"]:
            return None
        c = self.cols
        return writer.evaluation(step, name, c["prompts"], c["responses"], c["ground_truths"], c["extracted"],
                                 c["rewards"], c["correct"], c["finish_reasons"], c["lengths"], samples)


# -- reading ----------------------------------------------------------------------------------------

def _saved(run_dir: str | Path, pattern: re.Pattern, key: Callable[[re.Match], Any]) -> dict:
    """``{key(match): file}`` of the files in ``run_dir/rollouts`` whose names match ``pattern``, sorted."""
    d = Path(run_dir) / "rollouts"
    if not d.is_dir():
        return {}
    found = {key(m): p for p in d.iterdir() if (m := pattern.match(p.name))}
    return dict(sorted(found.items()))


def step_files(run_dir: str | Path) -> dict[int, Path]:
    """``{step: file}`` of the saved RL-step rollouts of ``run_dir``."""
    return _saved(run_dir, _STEP_RE, lambda m: int(m.group(1)))


def eval_files(run_dir: str | Path) -> dict[tuple[int, str], Path]:
    """``{(step, set name): file}`` of the saved evaluation samples of ``run_dir``."""
    return _saved(run_dir, _EVAL_RE, lambda m: (int(m.group(1)), m.group(2)))


def read_rollouts(path: str | Path) -> list[dict]:
    """The rows of one rollout file as dicts (`engine.core.files.DataFileError` naming a file that
    cannot be read)."""
    from engine.core.files import parquet_rows

    return parquet_rows(path)


def read_run(run_dir: str | Path, evaluations: bool = False) -> list[dict]:
    """Every saved row of ``run_dir`` (steps in order); with ``evaluations`` the evaluation samples,
    each row tagged with ``set`` (the evaluation set's name)."""
    rows: list[dict] = []
    if evaluations:
        for (step, name), p in eval_files(run_dir).items():
            rows += [{**r, "set": name} for r in read_rollouts(p)]
    else:
        for step, p in step_files(run_dir).items():
            rows += read_rollouts(p)
    return rows


# -- the training loop's hooks ----------------------------------------------------------------------

def open_writer(run_dir: str | Path, tracking: Any, resume_step: Optional[int] = None) -> Optional[RolloutWriter]:
    """The run's writer when ``tracking.save_rollouts`` is on, else None (`engine.runtime.loop.train`
    opens it once and hands it to the step and to evaluation)."""
    if not getattr(tracking, "save_rollouts", False):
        return None
    return RolloutWriter(run_dir, tracking.keep_rollout_steps, resume_step)


def save_step(w: Optional[RolloutWriter], step: int, prompt_set: Any, indices: Sequence[int], gen: Any,
              graded: dict[str, list], ground_truths: Sequence[str], group_size: int) -> Optional[Path]:
    """Save RL step ``step`` through the writer ``w`` (nothing when it is None).

    prompt_set: the `PromptSet` the step drew ``indices`` from; gen: the generator's output
    (``texts``, ``response_ids``, ``finish_reasons``); graded: the reward workers' answer.
    """
    if w is None:
        return None
    return w.step(step, [prompt_set.texts[i] for i in indices], gen.texts, ground_truths,
                  graded.get("extracted") or [None] * len(gen.texts), graded["reward"], graded["correct"],
                  gen.finish_reasons, [len(r) for r in gen.response_ids], group_size,
                  [prompt_set.data_sources[i] for i in indices], [prompt_set.levels[i] for i in indices])
