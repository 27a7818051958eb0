#!/bin/bash
#SBATCH --signal=B:USR1@60
#SBATCH --time=5
#SBATCH -o signal.out
trap 'echo caught' USR1
echo "set up"
