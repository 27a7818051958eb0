#!/bin/bash
#SBATCH -o /dev/null
# Task i of the second array waits for task i of the first.
prep=$(sbatch --parsable --array=0-2 -o /dev/null --wrap 'echo "prep $SLURM_ARRAY_TASK_ID" > "prep-$SLURM_ARRAY_TASK_ID.txt"')
sbatch --parsable --array=0-2 -o /dev/null --dependency=aftercorr:$prep --wrap 'cat "prep-$SLURM_ARRAY_TASK_ID.txt" > "use-$SLURM_ARRAY_TASK_ID.txt"' > /dev/null
