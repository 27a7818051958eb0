#!/bin/bash
#SBATCH -o hosts.out
scontrol show hostnames 'node[01-03],gpu7'
scontrol show hostnames "$SLURM_JOB_NODELIST" | wc -l
