#!/bin/bash
#SBATCH --nodes=1
#SBATCH --ntasks=2
#SBATCH -o nodes1.out
env | grep '^SLURM' | sort
