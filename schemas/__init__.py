"""Pydantic models of an experiment spec (`extra="forbid"` everywhere; units in descriptions)."""

from schemas.algorithm import AlgorithmSpec
from schemas.cluster import ClusterSpec
from schemas.common import AUTO, IntOrAuto, Section
from schemas.data import COMPLEX_TEMPLATE, SIMPLE_TEMPLATE, DataSpec, SyntheticData, render_prompt
from schemas.experiment import ExperimentSpec
from schemas.model import Architecture, ModelSpec, RopeScaling
from schemas.reward import RewardSpec
from schemas.rollout import RolloutSpec
from schemas.run import BENCHMARKS, CheckpointSpec, EvaluationSpec, TrackingSpec
from schemas.trainer import TrainerSpec

__all__ = [
    "AUTO", "IntOrAuto", "Section", "AlgorithmSpec", "Architecture", "BENCHMARKS", "COMPLEX_TEMPLATE",
    "CheckpointSpec", "ClusterSpec", "DataSpec", "EvaluationSpec", "ExperimentSpec", "ModelSpec",
    "RewardSpec", "RolloutSpec", "RopeScaling", "SIMPLE_TEMPLATE", "SyntheticData", "TrackingSpec", "TrainerSpec", "render_prompt",
]
