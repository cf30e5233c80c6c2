"""Small helpers every layer may use: atomic files and locks, secret masking, safe path parts, SLURM's ids."""
