"""The whole experiment: the root of a YAML spec."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field

from schemas.algorithm import AlgorithmSpec
from schemas.cluster import ClusterSpec
from schemas.common import Section
from schemas.data import DataSpec
from schemas.model import ModelSpec
from schemas.reward import RewardSpec
from schemas.rollout import RolloutSpec
from schemas.run import CheckpointSpec, EvaluationSpec, TrackingSpec
from schemas.trainer import TrainerSpec


class ExperimentSpec(Section):
    """A zero-RL experiment: what to train, on what data, with which objective, on which hardware."""

    name: str = Field(description="Experiment name (run folders are named after it).")
    description: Optional[str] = Field(None, description="Free text.")
    seed: int = Field(42, description="Global random seed.")
    model: ModelSpec
    data: DataSpec
    algorithm: AlgorithmSpec = Field(default_factory=AlgorithmSpec)
    reward: RewardSpec = Field(default_factory=RewardSpec)
    rollout: RolloutSpec = Field(default_factory=RolloutSpec)
    trainer: TrainerSpec = Field(default_factory=TrainerSpec)
    cluster: ClusterSpec = Field(default_factory=ClusterSpec)
    placement: Literal["colocated", "split"] = Field("colocated", description="colocated: trainer and generator share every GPU; split: disjoint GPU sets.")
    checkpoint: CheckpointSpec = Field(default_factory=CheckpointSpec)
    tracking: TrackingSpec = Field(default_factory=TrackingSpec)
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)
