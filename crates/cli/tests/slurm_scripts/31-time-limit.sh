#!/bin/bash
#SBATCH --time=00:10:00
#SBATCH -o time.out
echo "limited"
