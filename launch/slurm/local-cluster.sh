#!/usr/bin/env bash
# A single-node Slurm cluster on this machine, for tests and trying the batch scripts: munged, slurmctld and slurmd
# (Debian's munge and slurm-wlm) in the foreground as root, without systemd, every file under one state directory.
#   local-cluster.sh up [DIR]    start it (DIR: a new or empty directory; default mktemp); prints DIR on stdout
#   local-cluster.sh status DIR  the daemons, the node and the queue
#   local-cluster.sh down DIR    cancel its jobs, stop the processes it started (and only those), remove DIR
# Then: export SLURM_CONF=DIR/slurm.conf (or `source DIR/env`) and use sbatch, srun, squeue, scontrol as usual.
# Two clusters can run side by side: each has its own munge socket, free ports and state. Accounting is off, so
# `sacct` does not work: `scontrol show job ID` describes a job for MinJobAge (300 s) after it ends.
set -euo pipefail

die() { echo "local-cluster: error: $*" >&2; exit 1; }
note() { echo "local-cluster: $*" >&2; }
usage() { echo "usage: local-cluster.sh up [DIR] | status DIR | down DIR" >&2; exit 2; }

# Every daemon is started with this variable; slurmstepd inherits it from slurmd. `down` stops the processes that
# carry it with this DIR, so it never touches another cluster's or the system's daemons.
MARKER=QFORGE_SLURM_STATE

# pids_with ENV_ENTRY...: processes whose environment holds every given NAME=VALUE entry exactly.
pids_with() {
  local proc pid entry ok
  for proc in /proc/[0-9]*; do
    pid=${proc#/proc/}
    [ "$pid" -eq $$ ] && continue
    ok=1
    for entry in "$@"; do
      grep -qzxF -- "$entry" "/proc/$pid/environ" 2>/dev/null || { ok=0; break; }
    done
    [ $ok -eq 1 ] && echo "$pid"
  done
  return 0
}

# fail DAEMON: it did not come up; name it, show the end of its log (or of its output), stop what was started.
fail() {
  local log=$dir/log/$1.log
  [ -s "$log" ] || log=$dir/log/$1.out
  note "$1 did not start; the end of $log:"
  tail -n 20 "$log" >&2 2>/dev/null || true
  down "$dir" >/dev/null 2>&1 || true
  die "$1 did not start (state was in $dir, now removed)"
}

# free_ports N: N distinct TCP ports that nothing listens on now (the kernel picks them; all held until printed).
free_ports() {
  /usr/bin/python3 - "$1" <<'EOF'
import socket, sys
held = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in held:
    s.bind(("", 0))
print(" ".join(str(s.getsockname()[1]) for s in held))
EOF
}

# wait_for SECONDS COMMAND...: retries COMMAND every 0.2 s until it succeeds or SECONDS pass.
wait_for() {
  local deadline=$((SECONDS + $1)); shift
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || return 1
    sleep 0.2
  done
}

# start DAEMON ARGS...: DAEMON in the foreground (-F / -D) with the marker, its output in log/DAEMON.out, its pid in
# pids. A subshell waits for it: when it ends, its parent reaps it at once (`up` will have exited, and init may
# leave an orphan a zombie for seconds); the subshell's own stdout is closed so `$(local-cluster.sh up)` returns.
start() {
  local name=$1 foreground=-D; shift
  [ "$name" = munged ] && foreground="-F --force"
  (
    env "$MARKER=$dir" "$name" $foreground "$@" >>"$dir/log/$name.out" 2>&1 &
    echo "$name $!" >>"$dir/pids"
    wait
  ) >/dev/null 2>&1 &
  wait_for 5 grep -q "^$name " "$dir/pids"
}
all_reaped() {  # all_reaped PIDS_FILE: no process (not even a zombie) is left of those listed
  local name pid
  while read -r name pid; do [ ! -e "/proc/$pid" ] || return 1; done <"$1"
}
# started DAEMON SECONDS COMMAND...: waits until COMMAND succeeds; gives up at once if DAEMON has exited.
started() {
  local name=$1 deadline=$((SECONDS + $2)) pid; shift 2
  pid=$(awk -v n="$name" '$1 == n {print $2}' "$dir/pids")
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] && kill -0 "$pid" 2>/dev/null || return 1
    sleep 0.2
  done
}
node_idle() { sinfo -h -o %T | grep -qx idle; }

up() {
  [ "$(id -u)" -eq 0 ] || die "must run as root (munged and slurmd here run as root)"
  local tool
  for tool in munged slurmctld slurmd sbatch scontrol sinfo /usr/bin/python3; do
    command -v "$tool" >/dev/null \
      || die "'$tool' not found: run launch/install-deps.sh (slurmctld slurmd slurm-client munge)"
  done
  if [ -n "${1:-}" ]; then
    dir=$1
    mkdir -p "$dir" || die "cannot create '$dir'"
    [ -z "$(ls -A "$dir")" ] || die "'$dir' is not empty"
  else
    dir=$(mktemp -d /tmp/qforge-slurm.XXXXXX)
  fi
  dir=$(cd "$dir" && pwd)
  # munged refuses a socket directory that others can write to: 0755 on the directory and munge/.
  chmod 0755 "$dir"
  mkdir -p "$dir/munge" "$dir/ctld" "$dir/spool" "$dir/log"
  chmod 0755 "$dir/munge"
  : >"$dir/pids"

  # A private munge key: this cluster's credentials mean nothing to another one on the machine.
  dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 status=none
  chmod 0400 "$dir/munge/munge.key"

  local host ports ctld_port slurmd_port node
  host=$(hostname -s)
  ports=$(free_ports 2) || die "cannot find free TCP ports"
  ctld_port=${ports% *}
  slurmd_port=${ports#* }
  # The node as slurmd measures it (CPUs, sockets, cores, memory). QFORGE_SLURM_CPUS declares more CPUs than
  # the machine has (e.g. 4 tasks on 2 cores; config_overrides keeps slurmd from draining the node for it).
  node=$(slurmd -C | head -n 1)
  [[ $node == NodeName=* ]] || die "slurmd -C printed no node line: '$node'"
  local overrides=""
  if [ -n "${QFORGE_SLURM_CPUS:-}" ]; then
    [[ $QFORGE_SLURM_CPUS =~ ^[1-9][0-9]*$ ]] || die "QFORGE_SLURM_CPUS must be a positive integer"
    node="NodeName=$host CPUs=$QFORGE_SLURM_CPUS $(grep -o 'RealMemory=[0-9]*' <<<"$node")"
    overrides="SlurmdParameters=config_overrides"
  fi

  local first_job=$(( ((RANDOM << 15) | RANDOM) % 60000000 + 1000 ))
  cat >"$dir/slurm.conf" <<EOF
# Written by launch/slurm/local-cluster.sh for $host; everything lives under $dir.
ClusterName=qforge
# Job ids from a random start: Slurm's PMIx plugin names its directories in /tmp by job and step id, so two clusters
# both running their job 1 under srun would collide (measured: "task 0 launch failed").
FirstJobId=$first_job
SlurmctldHost=$host
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# The private munge socket; credentials expire after 10 s (120 by default), the wait before a requeued job restarts.
AuthInfo=socket=$dir/munge/munge.socket,cred_expire=10
StateSaveLocation=$dir/ctld
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
# No cgroups (a container, no systemd): processes tracked by parent id, tasks not confined.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
# Debian's Open MPI speaks PMIx only (srun --mpi=pmi2 fails).
MpiDefault=pmix
# batch_sched_delay=0: no 3 s wait before each batch job starts; sched_interval=2: requeued jobs start sooner.
SchedulerParameters=batch_sched_delay=0,sched_interval=2
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
ReturnToService=2
MailProg=/bin/true
$overrides
$node State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
  echo "export SLURM_CONF=$dir/slurm.conf" >"$dir/env"
  export SLURM_CONF=$dir/slurm.conf

  start munged --socket="$dir/munge/munge.socket" --key-file="$dir/munge/munge.key" \
    --log-file="$dir/log/munged.log" --pid-file="$dir/munge/munged.pid" --seed-file="$dir/munge/munged.seed"
  started munged 10 test -S "$dir/munge/munge.socket" || fail munged

  start slurmctld -f "$dir/slurm.conf"
  started slurmctld 20 scontrol ping || fail slurmctld

  start slurmd -f "$dir/slurm.conf"
  started slurmd 20 node_idle || fail slurmd

  note "up in $dir: node $host ($(grep -o 'CPUs=[0-9]*' <<<"$node")), slurmctld port $ctld_port," \
    "slurmd port $slurmd_port; export SLURM_CONF=$dir/slurm.conf"
  echo "$dir"
}

# checked_dir DIR: DIR must be a cluster this script started (it has the pids file and slurm.conf).
checked_dir() {
  [ -n "${1:-}" ] || usage
  [ -f "$1/pids" ] && [ -f "$1/slurm.conf" ] || die "'$1' is not a state directory of local-cluster.sh up"
  dir=$(cd "$1" && pwd)
  export SLURM_CONF=$dir/slurm.conf
}

status() {
  checked_dir "$@"
  local name pid alive=0
  while read -r name pid; do
    if [ -n "$(pids_with "$MARKER=$dir" | grep -x "$pid")" ]; then
      echo "$name: running (pid $pid)"; alive=$((alive + 1))
    else
      echo "$name: not running (pid $pid)"
    fi
  done <"$dir/pids"
  if [ $alive -eq 3 ]; then sinfo; squeue; fi
  [ $alive -eq 3 ]
}

down() {
  checked_dir "$@"
  # Jobs first, while slurmctld can still end them cleanly; then whatever is left of them (their processes carry
  # this cluster's SLURM_CONF and a job id), then the daemons and the slurmstepd they started.
  local jobs
  jobs=$(squeue -h -o %i 2>/dev/null || true)
  if [ -n "$jobs" ]; then
    # shellcheck disable=SC2086  # one job id a word
    scancel --full --signal=KILL $jobs 2>/dev/null || true
    # shellcheck disable=SC2086
    scancel $jobs 2>/dev/null || true
    wait_for 10 test -z "$(squeue -h -o %i 2>/dev/null)" || true
  fi
  local pids pid
  for pid in $(pids_with "SLURM_CONF=$dir/slurm.conf"); do
    if grep -qz '^SLURM_JOB_ID=' "/proc/$pid/environ" 2>/dev/null; then
      kill -KILL "$pid" 2>/dev/null || true
    fi
  done
  pids=$(pids_with "$MARKER=$dir")
  if [ -n "$pids" ]; then
    kill -TERM $pids 2>/dev/null || true
    # shellcheck disable=SC2046  # one pid a word
    wait_for 10 test -z "$(pids_with "$MARKER=$dir")" || kill -KILL $(pids_with "$MARKER=$dir") 2>/dev/null || true
  fi
  [ -z "$(pids_with "$MARKER=$dir")" ] || die "processes of $dir survived SIGKILL: $(pids_with "$MARKER=$dir")"
  # Gone for good, not even zombies: their subshells reap them (start).
  wait_for 10 all_reaped "$dir/pids" || note "daemons not yet reaped by init: $(awk '{print $2}' "$dir/pids")"
  rm -rf "$dir"
  note "down: $dir stopped and removed"
}

case "${1:-}" in
  up) shift; [ $# -le 1 ] || usage; up "$@" ;;
  status) shift; [ $# -eq 1 ] || usage; status "$@" ;;
  down) shift; [ $# -eq 1 ] || usage; down "$@" ;;
  *) usage ;;
esac
