#!/bin/bash
#SBATCH --tasks-per-node=2
#SBATCH -o tpn.out
env | grep '^SLURM' | sort
