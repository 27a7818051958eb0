#!/bin/bash
#SBATCH -J showme
#SBATCH -o showjob.out
# What scripts read of their own record.
scontrol show job "$SLURM_JOB_ID" | grep -oE '(^| )(JobName|JobState|Partition|NumCPUs|NodeList)=[^ ]+' | tr -d ' '
scontrol show job 999999999 > /dev/null 2>&1; echo "missing: $?"
