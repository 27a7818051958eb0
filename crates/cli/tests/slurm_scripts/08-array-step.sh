#!/bin/bash
#SBATCH --array=0-9:4
#SBATCH -o step-%a.out
echo "step $SLURM_ARRAY_TASK_STEP id $SLURM_ARRAY_TASK_ID"
