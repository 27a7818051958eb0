#!/bin/bash
#SBATCH --job-name=mysim
#SBATCH --output=%x-%j.out
#SBATCH --error=%x-%j.err
echo "running $SLURM_JOB_NAME"
echo "to stderr" >&2
env | grep '^SLURM' | sort
