#!/bin/bash
#SBATCH -c 2
#SBATCH -o omp.out
export OMP_NUM_THREADS=$SLURM_CPUS_PER_TASK
echo "OMP_NUM_THREADS=$OMP_NUM_THREADS"
env | grep '^SLURM' | sort
