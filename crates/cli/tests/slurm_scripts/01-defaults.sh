#!/bin/bash
# The smallest job: no options at all; prints what Slurm tells it.
env | grep '^SLURM' | sort
