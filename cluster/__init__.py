"""Cluster launch: SLURM sbatch rendering, hostfiles, multi-node launch helpers."""
