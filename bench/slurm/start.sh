#!/usr/bin/env bash
# Starts a single-host Slurm (munge, slurmctld, slurmd) whose state lives in one directory, for
# measuring Tidepool against Slurm on the same machine. Stop it with stop.sh and the same
# directory: it kills exactly the PIDs this script started.
#
# Usage: bench/slurm/start.sh [DIR]   (default: a new temporary directory)
# Prints the directory; clients need `export SLURM_CONF=DIR/slurm.conf`.
#
# Settings chosen for throughput: SchedulerParameters=batch_sched_delay=0,sched_min_interval=0,
# MaxArraySize=1000001 and MaxJobCount=5000000 (Slurm counts every task of arrays not yet
# purged, cancelled ones too), FirstJobId=100000 (ids no script's small numbers are mistaken for), proctrack/linuxproc and task/none (no cgroup plugins needed).
set -euo pipefail
dir=${1:-$(mktemp -d /tmp/tidepool-slurm.XXXXXX)}
mkdir -p "$dir/state" "$dir/spool"
dir=$(cd "$dir" && pwd)

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
fi

# munge: a key, its run directory, and the daemon as the munge user.
if [ ! -s /etc/munge/munge.key ]; then
    if command -v mungekey >/dev/null; then mungekey --create --keyfile=/etc/munge/munge.key --force; \
    else dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none; fi
fi
chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
mkdir -p /run/munge /var/lib/munge /var/log/munge && chown munge:munge /run/munge /var/lib/munge /var/log/munge
if ! munge -n >/dev/null 2>&1; then
    # munged runs as the munge user, who cannot reach "$dir" when it is root's and 0700 (as
    # mktemp makes it; munged then refuses to start): its pid file goes to munge's own run
    # directory, and is copied beside the others for stop.sh.
    munge_pid="/run/munge/munged.$(basename "$dir").pid"
    runuser -u munge -- munged --pid-file="$munge_pid" --force
    for _ in $(seq 50); do munge -n >/dev/null 2>&1 && [ -s "$munge_pid" ] && break; sleep 0.1; done
    cp "$munge_pid" "$dir/munged.pid"
fi

# Slurm's usual ports, unless another single-host Slurm (CI's, a benchmark's) holds them: then
# free ones, so the two never answer each other's clients.
port_in_use() { ss -Hltn "sport = :$1" 2>/dev/null | grep -q .; }
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
pick_port() { if port_in_use "$1"; then free_port; else echo "$1"; fi; }
ctld_port=${TIDEPOOL_SLURMCTLD_PORT:-$(pick_port 6817)}
slurmd_port=${TIDEPOOL_SLURMD_PORT:-$(pick_port 6818)}

node_line=$(slurmd -C | head -1)
host=$(hostname)
cat > "$dir/slurm.conf" <<CONF
ClusterName=tidepoolbench
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0
MaxArraySize=1000001
MaxJobCount=5000000
FirstJobId=100000
ReturnToService=2
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
$node_line State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF

export SLURM_CONF="$dir/slurm.conf"
slurmctld -f "$SLURM_CONF"
slurmd -f "$SLURM_CONF"
for _ in $(seq 100); do
    if sinfo -h -o %t 2>/dev/null | grep -qE '^(idle|mix|alloc)'; then
        echo "$dir"
        exit 0
    fi
    sleep 0.2
done
echo "slurm did not come up; see $dir/slurmctld.log and $dir/slurmd.log" >&2
exit 1
