"""`checkpoint:`, `tracking:` and `evaluation:` sections."""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import Field, PositiveInt

from schemas.common import Section

#: The six evaluation benchmarks (the type of `EvaluationSpec.benchmarks` items; BENCHMARKS lists them).
Benchmark = Literal["gsm8k", "math500", "minerva_math", "olympiadbench", "aime24", "amc23"]
BENCHMARKS: tuple[str, ...] = get_args(Benchmark)


class CheckpointSpec(Section):
    """When and where state is saved."""

    every: PositiveInt = Field(5, description="Save every this many RL steps.")
    keep_last: PositiveInt = Field(2, description="Checkpoints kept (older ones are deleted).")
    export_hf: bool = Field(True, description="Export the final policy as a HF model folder.")


class TrackingSpec(Section):
    """Metrics tracking."""

    backend: Literal["aim", "none"] = Field("aim", description="aim repo inside the run folder, or none (metrics.jsonl only).")
    runs_dir: str = Field("runs", description="Folder holding run folders.")
    experiment: str = Field("zero-rl", description="aim experiment name.")
    save_rollouts: bool = Field(True, description="Save every step's and every evaluation's responses as parquet in RUN/rollouts/ (engine analyze, engine report read them).")
    keep_rollout_steps: int = Field(0, ge=0, description="Keep only the saved rollouts of this many most recent steps (0 = every step; evaluation samples are always kept).")


class EvaluationSpec(Section):
    """Periodic evaluation on the six benchmarks."""

    every: int = Field(5, ge=0, description="Evaluate every this many RL steps (0 = never).")
    benchmarks: list[Benchmark] = Field(
        default_factory=lambda: list(BENCHMARKS), description="Benchmarks evaluated."
    )
    data_dir: str = Field(
        "../shared/data/benchmarks",
        description="Folder of <benchmark>.jsonl files in their published layouts (relative to the working directory).",
    )
    before_training: bool = Field(
        False, description="Also evaluate the base model before the first update (logged as step 0)."
    )
    base_temperature: float = Field(
        0.0, ge=0, description="Sampling temperature of that step-0 evaluation (0 = greedy, as the recipe evaluates base models)."
    )
    temperature: float = Field(1.0, ge=0, description="Sampling temperature for RL checkpoints.")
    top_p: float = Field(0.95, gt=0, le=1, description="Nucleus mass.")
    max_response_length: PositiveInt = Field(16384, description="Longest evaluation response (tokens).")
    batch_size: PositiveInt = Field(256, description="Prompts per evaluation batch (never the whole set at once).")
    samples: PositiveInt = Field(1, description="Samples per prompt (avg@k / pass@k).")
    samples_by_benchmark: dict[Benchmark, PositiveInt] = Field(
        default_factory=dict,
        description="Samples per prompt for particular benchmarks, over `samples` (the recipe: aime24 32, i.e. avg@32).",
    )
