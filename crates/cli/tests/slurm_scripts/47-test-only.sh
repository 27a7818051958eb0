#!/bin/bash
#SBATCH -o testonly.out
# Dry runs from inside a job: sbatch --test-only submits nothing and says whether it could run.
sbatch --test-only -n 1 --wrap true > /dev/null 2>&1; echo "fits: $?"
sbatch --test-only -p nosuchpartition --wrap true > /dev/null 2>&1; echo "unknown partition: $?"
sbatch --test-only -c 64 --wrap true > /dev/null 2>&1; echo "too many cores: $?"
sbatch --test-only -N 2 --wrap true > /dev/null 2>&1; echo "too many nodes: $?"
