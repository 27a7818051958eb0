#!/bin/bash
#SBATCH -p debug,nosuchpartition
#SBATCH -o plist.out
echo "partition $SLURM_JOB_PARTITION"
