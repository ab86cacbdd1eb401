# shellcheck shell=bash
# cluster-lib.sh - a self-contained Slurm cluster on this machine, for
# tools/slurm/test-cluster.sh and bench/shard.sh.  Source it (bash), then:
#
#   cluster_start DIR [CPUS]   munged, slurmctld and two slurmd nodes (n1,
#                              n2, CPUS each, default 2) in DIR; exports
#                              SLURM_CONF; returns 1 if the nodes do not
#                              come up (3 tries of 10 s)
#   cluster_stop DIR           stop them by their pids (TERM, then KILL)
#   cluster_wait LIMIT JOB...  wait until the jobs left the queue (polled:
#                              `sbatch --wait` lags ~30 s); 1 after LIMIT s
#   cluster_job_state JOB      "JobState=COMPLETED " when every task did
#
# Nothing in /etc: munged runs with its own key and socket (slurm.conf's
# AuthInfo=socket=...), the daemons on loopback ports picked at random,
# their state, spool and logs (DIR/log) under DIR.  The packages come from
# tools/deps.sh cluster.

cluster_pidfiles() {
  echo "$1/slurmd-n1.pid $1/slurmd-n2.pid $1/slurmctld.pid $1/munged.pid"
}

cluster_stop() {
  local f p pids=() alive
  for f in $(cluster_pidfiles "$1"); do
    [ -s "$f" ] && pids+=("$(cat "$f")")
  done
  [ ${#pids[@]} -gt 0 ] || return 0
  kill "${pids[@]}" 2>/dev/null || true
  # slurmctld saves its state first (and removes its pid file): wait for
  # them by the pids read above, up to 3 s, then KILL what is left
  for _ in $(seq 1 30); do
    alive=()
    for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive+=("$p"); done
    [ ${#alive[@]} -eq 0 ] && return 0
    sleep 0.1
  done
  kill -9 "${alive[@]}" 2>/dev/null || true
  return 0
}

cluster_start() {
  local p
  for p in munged slurmctld slurmd sbatch squeue scontrol sinfo; do
    command -v "$p" >/dev/null || {
      echo "cluster: $p is missing (tools/deps.sh cluster)" >&2; return 1; }
  done
  # a port the kernel handed out meanwhile (or another cluster's) makes a
  # daemon fail to bind: start again on other ports
  for _ in 1 2 3; do
    cluster_start_once "$@" && return 0
    cluster_stop "$1"
  done
  echo "cluster: the nodes did not come up" >&2
  return 1
}

cluster_start_once() {
  local T=$1 cpus=${2:-2} base
  rm -rf "$T/state" "$T/spool" "$T"/log/slurm*.log
  mkdir -p "$T/state" "$T/spool/n1" "$T/spool/n2" "$T/log"
  dd if=/dev/urandom of="$T/munge.key" bs=1024 count=1 2>/dev/null
  chmod 400 "$T/munge.key"
  munged --force --key-file="$T/munge.key" --socket="$T/munge.sock" \
    --pid-file="$T/munged.pid" --log-file="$T/log/munged.log" \
    --seed-file="$T/munged.seed"
  # below Linux's ephemeral ports (32768-60999)
  base=$((10000 + RANDOM % 20000))
  export SLURM_CONF=$T/slurm.conf
  cat > "$SLURM_CONF" <<EOF
ClusterName=vlmtest
SlurmctldHost=localhost(127.0.0.1)
SlurmUser=$(id -un)
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$T/munge.sock
CredType=cred/munge
StateSaveLocation=$T/state
SlurmdSpoolDir=$T/spool/%n
SlurmctldPidFile=$T/slurmctld.pid
SlurmdPidFile=$T/slurmd-%n.pid
SlurmctldPort=$base
SlurmctldLogFile=$T/log/slurmctld.log
SlurmdLogFile=$T/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/builtin
SchedulerParameters=sched_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
MpiDefault=none
SwitchType=switch/none
NodeName=n1 NodeHostname=localhost NodeAddr=127.0.0.1 Port=$((base + 1)) CPUs=$cpus State=UNKNOWN
NodeName=n2 NodeHostname=localhost NodeAddr=127.0.0.1 Port=$((base + 2)) CPUs=$cpus State=UNKNOWN
PartitionName=test Nodes=n1,n2 Default=YES MaxTime=INFINITE State=UP
EOF
  slurmctld -f "$SLURM_CONF" -i
  slurmd -f "$SLURM_CONF" -N n1
  slurmd -f "$SLURM_CONF" -N n2
  # a daemon that could not start says so in its log: try other ports at
  # once (sinfo against a controller that is not there waits out its
  # message timeout, so each call is bounded too)
  for _ in $(seq 1 100); do
    grep -qs 'fatal:' "$T"/log/slurmctld.log "$T"/log/slurmd-n1.log \
      "$T"/log/slurmd-n2.log && return 1
    [ "$(timeout 2 sinfo -h -N -t idle -o %N 2>/dev/null | wc -l)" = 2 ] && return 0
    sleep 0.1
  done
  return 1
}

cluster_wait() {
  local limit=$1; shift
  for _ in $(seq 1 $((limit * 5))); do
    [ -z "$(squeue -h -j "$(IFS=,; echo "$*")" 2>/dev/null)" ] && return 0
    sleep 0.2
  done
  echo "cluster: jobs $* still queued after $limit s" >&2
  return 1
}

cluster_job_state() {
  scontrol show job "$1" | grep -o 'JobState=[A-Z]*' | sort -u | tr '\n' ' '
}
