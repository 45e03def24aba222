"""Spec compiler: load YAML -> validate -> lower to a placement `Plan`. Imports no torch, Ray or vLLM."""

from compiler.plan import DevicePlan, Plan, RolloutPlan, TrainerPlan

__all__ = ["DevicePlan", "Plan", "RolloutPlan", "TrainerPlan"]
