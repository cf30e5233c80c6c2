#!/usr/bin/env bash
# The variants_matched Pareto sweep (its grid: conf/experiment/variants_matched.yaml). Extra arguments are Hydra overrides:
#   sweeps/variants_matched.sh hydra/launcher=slurm        # one SLURM array job; without it, one run after another here
# then `saeexp-pareto sweep_variants_matched` draws the frontiers and logs them to MLflow.
exec saeexp -m experiment=variants_matched "$@"
