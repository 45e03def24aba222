"""Spec compiler: load YAML -> validate -> lower to a placement `Plan`. Imports no torch, Ray or vLLM."""

from compiler.api import compile_spec, resolve_spec
from compiler.errors import Problem, SpecError
from compiler.load import LoadedSpec, load_spec
from compiler.plan import DevicePlan, Plan, RolloutPlan, TrainerPlan

__all__ = [
    "DevicePlan", "LoadedSpec", "Plan", "Problem", "RolloutPlan", "SpecError", "TrainerPlan",
    "compile_spec", "load_spec", "resolve_spec",
]
