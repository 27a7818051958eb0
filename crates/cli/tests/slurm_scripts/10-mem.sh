#!/bin/bash
#SBATCH --mem=200M
#SBATCH -o mem.out
echo "mem per node $SLURM_MEM_PER_NODE"
env | grep '^SLURM' | sort
