#!/bin/bash
#SBATCH --dependency=afterok:999999
echo "never"
