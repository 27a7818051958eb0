#!/bin/bash
#SBATCH --mem-per-cpu=100M
#SBATCH --cpus-per-task=2
#SBATCH -o mpc.out
echo "mem per cpu $SLURM_MEM_PER_CPU"
env | grep '^SLURM' | sort
