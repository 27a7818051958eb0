#!/bin/bash
#SBATCH -o shared.out
#SBATCH --open-mode=append
echo "first"
sbatch --parsable -o shared.out --open-mode=append --dependency=afterok:$SLURM_JOB_ID --wrap 'echo second' > /dev/null
