#!/bin/bash
#SBATCH -o /dev/null
bad=$(sbatch --parsable -o /dev/null --wrap 'exit 1')
good=$(sbatch --parsable -o /dev/null --wrap 'true')
sbatch --parsable -o /dev/null --dependency="afterok:$bad?afterok:$good" --wrap 'echo either >> order.log' > /dev/null
