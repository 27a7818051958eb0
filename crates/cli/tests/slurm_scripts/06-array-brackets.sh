#!/bin/bash
#SBATCH --array=[0-2]
#SBATCH -o /dev/null
echo "$SLURM_ARRAY_TASK_ID" > "index-$SLURM_ARRAY_TASK_ID.txt"
