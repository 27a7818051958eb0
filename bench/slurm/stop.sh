#!/usr/bin/env bash
# Stops the Slurm that start.sh started in DIR, by the PIDs it recorded there.
set -uo pipefail
dir=${1:?usage: bench/slurm/stop.sh DIR}
for name in slurmd slurmctld munged; do
    pidfile="$dir/$name.pid"
    [ -s "$pidfile" ] || continue
    pid=$(cat "$pidfile")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
done
