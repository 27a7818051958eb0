#!/bin/bash
#SBATCH -J stage1
#SBATCH -o /dev/null
# A three-stage pipeline: each stage starts the next once it has succeeded.
echo "stage1" >> order.log
two=$(sbatch --parsable -J stage2 -o /dev/null --dependency=afterok:$SLURM_JOB_ID --wrap 'echo stage2 >> order.log')
sbatch --parsable -J stage3 -o /dev/null --dependency=afterok:$two --wrap 'echo stage3 >> order.log' > /dev/null
