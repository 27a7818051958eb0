#!/bin/bash
#SBATCH --array=0-3
#SBATCH --output=arr-%A_%a.out
echo "task $SLURM_ARRAY_TASK_ID of $SLURM_ARRAY_TASK_COUNT ($SLURM_ARRAY_TASK_MIN-$SLURM_ARRAY_TASK_MAX)"
env | grep '^SLURM' | sort
