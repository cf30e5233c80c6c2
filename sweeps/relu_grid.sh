#!/usr/bin/env bash
# The relu_grid Pareto sweep (its grid: conf/experiment/relu_grid.yaml). Extra arguments are Hydra overrides:
#   sweeps/relu_grid.sh hydra/launcher=slurm        # one SLURM array job; without it, one run after another here
# then `saeexp-pareto sweep_relu_grid` draws the frontiers and logs them to MLflow.
exec saeexp -m experiment=relu_grid "$@"
