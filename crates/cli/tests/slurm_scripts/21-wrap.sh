#!/bin/bash
#SBATCH -o /dev/null
sbatch --parsable -J wrapped -o wrapped.out --wrap 'echo "wrapped $SLURM_JOB_NAME"' > /dev/null
