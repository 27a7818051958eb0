#!/bin/bash
#SBATCH --export=FOO,BAR=baz
#SBATCH -o exportlist.out
echo "foo=${FOO:-unset} bar=${BAR:-unset} home=${HOME:+set}"
