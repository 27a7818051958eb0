#!/bin/bash
#SBATCH --array=1,5,10
#SBATCH -o list-%a.out
echo "input_${SLURM_ARRAY_TASK_ID}.dat"
