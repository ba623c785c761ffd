#!/usr/bin/env bash
# A real single-node SLURM cluster in one directory, for tests/test_slurm.py, CI and trying hydra/launcher=slurm
# by hand: munged, slurmctld and slurmd from Debian's packages (slurm-wlm 22.05), started directly (no systemd),
# every file they write (key, socket, state, spool, logs, pid files) under DIR.
#
#   bash scripts/slurm_cluster.sh install      # apt-get the packages if missing (root; the only network step)
#   bash scripts/slurm_cluster.sh start DIR    # start the cluster, wait until its node is idle; prints the env
#   eval "$(bash scripts/slurm_cluster.sh env DIR)"   # SLURM_CONF=DIR/slurm.conf for sbatch, squeue, scontrol
#   bash scripts/slurm_cluster.sh stop DIR     # stop the daemons; nothing of the cluster keeps running
#
# Commands find the cluster through SLURM_CONF (which sbatch passes on to the jobs, and submitit to its calls);
# munge's socket is named in slurm.conf (AuthInfo), so nothing outside DIR is used and two clusters (two pytest
# workers) can run side by side on free ports. A shell script rather than a Python module: CI, the tests and a
# person at a terminal run the same steps.
#
# The cluster: one node (this host, all its cores, or MMBENCH_SLURM_CPUS to run more jobs at once than there are
# cores (the tests: two pytest workers share one cluster), 90% of its memory), partition `debug` (default, no time
# limit), cores as the consumable resource (select/cons_tres, CR_Core: a job with cpus_per_task=1 takes one core,
# so on 2 cores 2 jobs run at once), no accounting database (sacct answers "accounting storage is disabled";
# submitit then waits for its result files, and its "Bypassing sacct error" warnings are expected here).
# Needs root: slurmd starts jobs as their user, and munged's key must be the running user's.
set -euo pipefail

PACKAGES=(slurmctld slurmd slurm-client munge)
BINARIES=(munged slurmctld slurmd sbatch squeue scontrol sinfo)

die() {
  echo "slurm_cluster: $*" >&2
  exit 1
}

missing_binaries() {
  local b out=()
  for b in "${BINARIES[@]}"; do
    command -v "$b" >/dev/null 2>&1 || [ -x "/usr/sbin/$b" ] || out+=("$b")
  done
  echo "${out[*]}"
}

cmd_install() {
  local missing
  missing="$(missing_binaries)"
  [ -z "$missing" ] && return 0
  [ "$(id -u)" = 0 ] || die "$missing not installed and not root: run \`sudo bash scripts/slurm_cluster.sh install\`"
  command -v apt-get >/dev/null 2>&1 || die "$missing not installed and no apt-get: install SLURM and munge yourself"
  export DEBIAN_FRONTEND=noninteractive
  # quiet unless it fails; where policy-rc.d forbids it (containers) the packages start no daemon: `start` does
  local out
  if ! out="$(apt-get install -y -q --no-install-recommends "${PACKAGES[@]}" 2>&1)"; then
    apt-get update -q >/dev/null 2>&1 || true # a machine whose package lists were cleaned
    if ! out="$(apt-get install -y -q --no-install-recommends "${PACKAGES[@]}" 2>&1)"; then
      tail -n 5 <<<"$out" >&2
      die "apt-get install ${PACKAGES[*]} failed (above)"
    fi
  fi
  missing="$(missing_binaries)"
  [ -z "$missing" ] || die "installed ${PACKAGES[*]}, but $missing is still missing"
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

host_cpus() {
  # the cores this process may use; not OMP_NUM_THREADS, which nproc also obeys (pytest workers set it to 1)
  env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc
}

write_conf() {
  local dir=$1 host cpus mem_mb ctld_port slurmd_port
  host="$(hostname -s)"
  cpus="${MMBENCH_SLURM_CPUS:-$(host_cpus)}"
  mem_mb="$(awk '/^MemTotal:/ {printf "%d", $2 / 1024 * 0.9}' /proc/meminfo)"
  ctld_port="$(free_port)"
  slurmd_port="$(free_port)"
  [ "$ctld_port" != "$slurmd_port" ] || slurmd_port=$((ctld_port + 1))
  cat >"$dir/slurm.conf" <<EOF
# written by scripts/slurm_cluster.sh: a single-node cluster for tests
ClusterName=mmbench
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire: also how long a requeued job waits before it may start again (default 120 s)
AuthInfo=socket=$dir/munge/munge.socket,cred_expire=10
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
# look at the queue every second, not every minute: tiny jobs start at once
SchedulerParameters=sched_interval=1,bf_interval=1,defer_batch
MinJobAge=30
ReturnToService=2
# a stopped job's processes get SIGTERM, then SIGKILL after KillWait s (a tiny run records itself in 1-2 s)
KillWait=10
InactiveLimit=0
Waittime=0
$([ "$cpus" = "$(host_cpus)" ] || echo "SlurmdParameters=config_overrides # CPUs=$cpus: not the host's $(host_cpus)")
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
}

pid_alive() {
  [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

logs_tail() {
  local dir=$1 f
  for f in munge/munged.log slurmctld.log slurmd.log; do
    [ -s "$dir/$f" ] && { echo "--- $dir/$f (last lines)"; tail -n 8 "$dir/$f"; }
  done
  return 0
}

cmd_env() {
  local dir
  dir="$(cd "$1" && pwd)"
  echo "export SLURM_CONF=$dir/slurm.conf"
}

cmd_start() {
  local dir=$1 missing i state
  missing="$(missing_binaries)"
  [ -z "$missing" ] || die "$missing not installed: run \`bash scripts/slurm_cluster.sh install\` as root"
  [ "$(id -u)" = 0 ] || die "starting slurmd needs root (it starts jobs as their user); this is uid $(id -u)"
  mkdir -p "$dir"
  dir="$(cd "$dir" && pwd)"
  if pid_alive "$dir/slurmctld.pid" || pid_alive "$dir/munge/munged.pid"; then
    die "a cluster is already running in $dir: \`bash scripts/slurm_cluster.sh stop $dir\` first"
  fi
  mkdir -p "$dir/munge" "$dir/state" "$dir/spool"
  chmod 755 "$dir/munge" # the key file itself is 400
  write_conf "$dir"
  export PATH="$PATH:/usr/sbin"

  # munge: a fresh key; --force because munged refuses root and a socket outside /run/munge otherwise
  dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 status=none
  chmod 400 "$dir/munge/munge.key"
  munged --force --key-file="$dir/munge/munge.key" --socket="$dir/munge/munge.socket" \
    --pid-file="$dir/munge/munged.pid" --log-file="$dir/munge/munged.log" --seed-file="$dir/munge/munged.seed" ||
    { logs_tail "$dir" >&2; die "munged did not start"; }

  export SLURM_CONF="$dir/slurm.conf"
  slurmctld -f "$SLURM_CONF" -i || { logs_tail "$dir" >&2; die "slurmctld did not start"; }
  slurmd -f "$SLURM_CONF" || { logs_tail "$dir" >&2; die "slurmd did not start"; }

  # ready when the node is idle (a node that registered wrongly is `inval` or `drain`: the log says why)
  state=""
  for i in $(seq 1 60); do
    state="$(sinfo -h -N -o '%T' 2>/dev/null | head -n 1 || true)"
    [ "$state" = idle ] && break
    sleep 0.5
  done
  if [ "$state" != idle ]; then
    logs_tail "$dir" >&2
    cmd_stop "$dir" >/dev/null 2>&1 || true
    die "the node did not become idle within 30 s (state: ${state:-no answer from slurmctld})"
  fi
  cmd_env "$dir"
}

stop_pidfiles() {
  # SIGTERM to all at once (each daemon takes 1-2 s to exit), SIGKILL to any still there after 5 s
  local pidfile pids=() pid i
  for pidfile in "$@"; do
    [ -f "$pidfile" ] && pids+=("$(cat "$pidfile")")
    rm -f "$pidfile"
  done
  [ ${#pids[@]} -gt 0 ] || return 0
  kill -TERM "${pids[@]}" 2>/dev/null || true
  for i in $(seq 1 50); do
    for pid in "${pids[@]}"; do
      kill -0 "$pid" 2>/dev/null && break
      pid=""
    done
    [ -z "$pid" ] && return 0
    sleep 0.1
  done
  kill -KILL "${pids[@]}" 2>/dev/null || true
}

cmd_stop() {
  local dir=$1
  [ -d "$dir" ] || return 0
  dir="$(cd "$dir" && pwd)"
  if [ -f "$dir/slurm.conf" ] && pid_alive "$dir/slurmctld.pid"; then
    # end the jobs first, so that their slurmstepd reaps their processes
    local jobs
    jobs="$(SLURM_CONF="$dir/slurm.conf" squeue -h -o %A 2>/dev/null || true)"
    if [ -n "$jobs" ]; then
      # shellcheck disable=SC2086
      SLURM_CONF="$dir/slurm.conf" scancel --quiet --full --signal=KILL $jobs 2>/dev/null || true
      # shellcheck disable=SC2086
      SLURM_CONF="$dir/slurm.conf" scancel --quiet $jobs 2>/dev/null || true
      sleep 1
    fi
  fi
  stop_pidfiles "$dir/slurmd.pid" "$dir/slurmctld.pid" "$dir/munge/munged.pid"
  # what the cluster's slurmstepd left behind (slurmd and slurmctld are gone by now): its slurmstepd processes
  # and the jobs' processes, told by this cluster's slurm.conf in their environment (slurmd was started with it,
  # sbatch hands it on) and, for a job's process, SLURM_JOB_ID: another cluster, the shell or the test session
  # that started this one are not touched
  local proc environ
  for proc in /proc/[0-9]*; do
    environ="$(tr '\0' '\n' 2>/dev/null <"$proc/environ")" || continue
    grep -qx "SLURM_CONF=$dir/slurm.conf" <<<"$environ" || continue
    if grep -q '^SLURM_JOB_ID=' <<<"$environ" || [ "$(cat "$proc/comm" 2>/dev/null)" = slurmstepd ]; then
      kill -KILL "${proc#/proc/}" 2>/dev/null || true
    fi
  done
}

case "${1:-}" in
  install) cmd_install ;;
  start) cmd_start "${2:?usage: slurm_cluster.sh start DIR}" ;;
  stop) cmd_stop "${2:?usage: slurm_cluster.sh stop DIR}" ;;
  env) cmd_env "${2:?usage: slurm_cluster.sh env DIR}" ;;
  *) die "usage: slurm_cluster.sh install | start DIR | stop DIR | env DIR" ;;
esac
