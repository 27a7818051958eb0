#!/bin/bash
#SBATCH --array=0-5%2
#SBATCH -o thr-%a.out
echo "task $SLURM_ARRAY_TASK_ID"
