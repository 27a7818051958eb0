#!/bin/bash
#SBATCH -o /dev/null
arr=$(sbatch --parsable --array=0-2 -o /dev/null --wrap 'echo "task $SLURM_ARRAY_TASK_ID" > "task-$SLURM_ARRAY_TASK_ID.txt"')
sbatch --parsable -o /dev/null --dependency=afterok:$arr --wrap 'echo "after all $(cat task-*.txt | wc -l)" >> order.log' > /dev/null
