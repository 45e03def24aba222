"""Evaluation during training: the six SimpleRL-Zoo benchmarks and pass@k metrics."""
