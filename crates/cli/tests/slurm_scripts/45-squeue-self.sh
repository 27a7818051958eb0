#!/bin/bash
#SBATCH -J selfaware
#SBATCH -o squeue.out
squeue -h -j "$SLURM_JOB_ID" -o "%T %j"
