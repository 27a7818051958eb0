#!/bin/bash
#SBATCH -p nosuchpartition
echo "never"
