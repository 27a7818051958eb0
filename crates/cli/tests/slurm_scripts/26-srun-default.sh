#!/bin/bash
#SBATCH --ntasks=2
#SBATCH -o srun.out
echo "lines $(srun hostname | wc -l)"
srun -l echo hi | sort
srun -n 1 echo one
