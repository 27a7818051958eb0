#!/bin/bash
#SBATCH --export=NONE
#SBATCH -o none.out
echo "home=${HOME:+set} user=${USER:+set} foo=${FOO:-unset}"
env | grep '^SLURM' | sort
