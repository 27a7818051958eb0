#!/bin/bash
#SBATCH -o /dev/null
bad=$(sbatch --parsable -o /dev/null --wrap 'echo failing >> order.log; exit 1')
sbatch --parsable -o /dev/null --dependency=afterany:$bad --wrap 'echo cleanup >> order.log' > /dev/null
