#!/bin/bash
#SBATCH --array=[1-7:2]%2
#SBATCH -o st-%a.out
echo "task $SLURM_ARRAY_TASK_ID count $SLURM_ARRAY_TASK_COUNT step $SLURM_ARRAY_TASK_STEP"
