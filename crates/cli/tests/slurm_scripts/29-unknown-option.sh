#!/bin/bash
#SBATCH --no-such-option=1
echo "never"
