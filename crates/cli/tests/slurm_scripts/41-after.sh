#!/bin/bash
#SBATCH -o /dev/null
# "after": starts once the other job has started, whatever its end.
first=$(sbatch --parsable -o /dev/null --wrap 'echo first >> order.log; sleep 2; exit 1')
sbatch --parsable -o /dev/null --dependency=after:$first --wrap 'echo second-started >> started.log' > /dev/null
