#!/bin/bash
#SBATCH -o exit.out
echo "about to fail"
exit 3
