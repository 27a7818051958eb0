#!/bin/bash
#SBATCH -o /dev/null
bad=$(sbatch --parsable -o /dev/null --wrap 'exit 1')
sbatch --parsable -o /dev/null --kill-on-invalid-dep=yes --dependency=afterok:$bad --wrap 'echo never >> order.log' > /dev/null
