"""Sweeps on SLURM: preemption and requeue, the pre-array harvest, the Pareto report, SLURM/MLflow reconciling.

Nothing here is imported by `saeexp` itself; submitit and mlflow are imported where used.
"""
