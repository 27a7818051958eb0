#!/bin/bash
#SBATCH --ntasks=2
#SBATCH -o srunenv.out
srun bash -c 'echo "rank $SLURM_PROCID local $SLURM_LOCALID node $SLURM_NODEID of $SLURM_NTASKS step $SLURM_STEP_ID"' | sort
srun -n 1 bash -c 'echo "alone $SLURM_PROCID of $SLURM_NTASKS step $SLURM_STEP_ID"'
