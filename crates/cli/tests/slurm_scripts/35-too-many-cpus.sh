#!/bin/bash
#SBATCH --cpus-per-task=64
echo "never"
