#!/bin/bash
#SBATCH -o /dev/null
for i in 1 2; do
  sbatch --parsable -J only-one -o /dev/null --dependency=singleton --wrap "echo start >> order.log; sleep 1; echo end >> order.log" > /dev/null
done
