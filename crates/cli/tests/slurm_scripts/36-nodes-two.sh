#!/bin/bash
#SBATCH --nodes=2
echo "never on a one-node cluster"
