#!/bin/bash
#SBATCH --partition=debug
#SBATCH -o part.out
echo "partition $SLURM_JOB_PARTITION"
