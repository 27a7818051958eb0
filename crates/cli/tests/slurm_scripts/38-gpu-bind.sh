#!/bin/bash
#SBATCH --gpu-bind=closest
#SBATCH -o gpubind.out
echo "bound"
