#!/bin/bash
#SBATCH -o /dev/null
bad=$(sbatch --parsable -o /dev/null --wrap 'exit 2')
sbatch --parsable -o /dev/null --dependency=afternotok:$bad --wrap 'echo rescue >> order.log' > /dev/null
# Can never start: it stays pending with reason DependencyNeverSatisfied.
sbatch --parsable -o /dev/null --dependency=afterok:$bad --wrap 'echo never >> order.log' > /dev/null
