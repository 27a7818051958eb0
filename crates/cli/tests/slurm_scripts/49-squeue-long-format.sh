#!/bin/bash
#SBATCH -J selfcheck
#SBATCH -o squeue-format.out
# squeue's long format, as monitoring scripts use it.
squeue -h -j "$SLURM_JOB_ID" -O "Name:12,StateCompact:4,Partition:8,NumCPUs:.4"
squeue -h -j "$SLURM_JOB_ID" -o "%.10j|%t|%P"
