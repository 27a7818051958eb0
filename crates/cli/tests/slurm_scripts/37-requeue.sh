#!/bin/bash
#SBATCH --requeue
#SBATCH -o requeue.out
echo "requeueable"
