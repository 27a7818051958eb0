#!/bin/bash
#SBATCH -o cancelled.out
echo "before"
scancel "$SLURM_JOB_ID"
sleep 30
echo "not reached"
