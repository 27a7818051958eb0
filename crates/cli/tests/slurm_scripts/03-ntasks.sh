#!/bin/bash
#SBATCH --ntasks=2
#SBATCH --cpus-per-task=1
#SBATCH -o ntasks.out
# mpirun -np and OpenMP settings are usually read from these.
echo "np=$SLURM_NTASKS threads=$SLURM_CPUS_PER_TASK"
env | grep '^SLURM' | sort
