#!/bin/bash
#SBATCH -o late.out
echo "name $SLURM_JOB_NAME"
#SBATCH -J ignored-after-a-command
