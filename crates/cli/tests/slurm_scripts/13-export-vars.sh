#!/bin/bash
#SBATCH --export=ALL,GREETING=hello
#SBATCH -o vars.out
echo "greeting=$GREETING foo=$FOO"
