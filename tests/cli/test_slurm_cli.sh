#!/usr/bin/env bash
# qforge under a real Slurm (issue 15, point 4): launch/slurm/local-cluster.sh brings up munged, slurmctld and
# slurmd on this machine; launch/slurm/qforge.sbatch runs a 2-task job to completion under srun; a job stopped by
# SIGTERM (what Slurm sends before the time limit) saves a checkpoint and exits 0, and the resubmitted job finishes
# with the uninterrupted job's student, byte for byte; under mpirun the stopped job requeues itself and its rerun
# resumes, again to the same student. The cluster is always taken down, and only its processes are stopped.
# Exit 77 (a CTest skip) only where Slurm cannot be installed or run (not root).
# usage: test_slurm_cli.sh QFORGE MPIEXEC
set -u
QFORGE=$1
MPIEXEC=$2
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$here/cli_support.sh"
cluster_script="$here/../../launch/slurm/local-cluster.sh"
sbatch_script="$here/../../launch/slurm/qforge.sbatch"

# The job every sbatch below runs, in one place: qforge's arguments, relative to the job's directory (each job runs
# in its own, --chdir). 64 steps of QAT on a random 2-layer model, a checkpoint every 8 steps (the test stops jobs
# once one exists, so that the stop lands mid-run). RESULT is what an interrupted and an uninterrupted job must
# share byte for byte. Once `qforge pipeline` exists this becomes: pipeline --config "$work/pipeline.yaml".
JOB_ARGS=(qat --model "$work/model" --corpus "$work/corpus.h5" --output qat --quant 4-8-4 --lr 1e-3
  --set train.global_batch=8 --set train.epochs=4 --set train.save_every=8 --set runtime.threads=1)
RESULT=qat/student/model.safetensors
FIRST_CHECKPOINT=qat/checkpoints/step-00000008

skip() { echo "skip: $1"; echo "0 passed, 0 failed"; exit 77; }
[ "$(id -u)" -eq 0 ] || skip "munged and slurmd run as root here; not root"
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null \
   || ! command -v sbatch >/dev/null; then
  # launch/install-deps.sh installs these; a tree built before they were added gets them here.
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge \
    >/dev/null 2>&1 || skip "Slurm cannot be installed (apt-get install slurmctld slurmd slurm-client munge failed)"
fi

# A test started inside some other Slurm job must not talk to that cluster or inherit its job's settings.
for v in $(env | grep -o '^SLURM_[A-Z_]*' || true); do unset "$v"; done
cluster=""
teardown() {
  if [ -n "$cluster" ]; then bash "$cluster_script" down "$cluster" || echo "FAIL teardown of $cluster"; fi
  rm -rf "$work"
}
trap teardown EXIT

start=$SECONDS
cluster=$(bash "$cluster_script" up "$work/cluster" 2>"$work/err")
code=$?
[ $code -eq 0 ] && [ -f "$work/cluster/slurm.conf" ] && status=$(bash "$cluster_script" status "$work/cluster")
check "local-cluster.sh up: munged, slurmctld, slurmd running, node idle in $((SECONDS - start)) s" $? \
  || { cat "$work/err"; cluster="$work/cluster"; exit 1; }
echo "$status" | sed -n 1,5p
export SLURM_CONF=$cluster/slurm.conf

"$QFORGE" init-model --out "$work/model" --hidden 64 --layers 2 --heads 4 --kv-heads 4 --seed 1 2>/dev/null \
  && "$QFORGE" generate --model "$work/model" --output "$work/corpus.h5" --num-samples 128 --seq-len 64 \
    --batch-size 16 --set runtime.threads=1 2>/dev/null
check "a random model and a 128-sample corpus to train on" $? || exit 1

submit() {  # submit NAME [qforge arguments...]: sbatch on 2 tasks in $work/NAME; sets $job (the job id)
  local name=$1; shift
  mkdir -p "$work/$name"
  job=$(sbatch --parsable --ntasks=2 --chdir="$work/$name" --output=job.out --job-name="$name" "$sbatch_script" "$@")
}
field() { scontrol show job -o "$1" 2>/dev/null | grep -o " $2=[^ ]*" | cut -d= -f2; }
finish() {  # finish JOB SECONDS: waits until JOB has ended for good (a requeued job comes back); sets $state, $exit
  local deadline=$((SECONDS + $2))
  while [ $SECONDS -lt $deadline ]; do
    state=$(field "$1" JobState)
    case "$state" in PENDING|RUNNING|REQUEUED|CONFIGURING|COMPLETING|SUSPENDED|"") sleep 0.5 ;; *) break ;; esac
  done
  exit=$(field "$1" ExitCode)
  echo "job $1: $state, exit code $exit, restarts $(field "$1" Restarts), $(field "$1" RunTime) run time"
}
stop_when_saved() {  # stop_when_saved JOB NAME: SIGTERM to the batch script once the first checkpoint exists
  for _ in $(seq 1 2400); do [ -e "$work/$2/$FIRST_CHECKPOINT" ] && break; sleep 0.05; done
  scancel --signal=TERM --batch "$1"
}
output() { cat "$work/$1/job.out"; }
showjob() { echo "--- $1/job.out"; output "$1" | grep -v '^\[.*\] I \(train\|saving\|GPTQ export\)' | tail -n 30; }

# 1. Uninterrupted, under srun --mpi=pmix (the default), every rank logging to its own file as well.
QFORGE_LOG_DIR="$work/whole/logs" submit whole "${JOB_ARGS[@]}"
finish "$job" 120
reference="$work/whole/$RESULT"
[ "$state" = COMPLETED ] && [ "$exit" = 0:0 ] && [ -f "$reference" ] \
  && output whole | grep -q "2 tasks on 1 node(s) by srun --mpi=pmix" && output whole | grep -q '\[.* r0/2\] I qat:' \
  && [ -s "$work/whole/logs/qforge-$job-rank-0.log" ] && [ -s "$work/whole/logs/qforge-$job-rank-1.log" ]
check "sbatch -n 2 qforge.sbatch qat (srun): COMPLETED, exit 0:0, 2 ranks, the student, a log file per rank" $? \
  || showjob whole
grep -h "qat: 64 steps" "$work/whole/job.out"

# 2. SIGTERM to the batch script mid-run (scancel --signal=TERM --batch: what --signal=B:TERM@300 does before the
# time limit): forwarded to the ranks, a checkpoint, exit 0 and no student; the resubmitted job with --resume ends
# with the uninterrupted student.
submit stopped "${JOB_ARGS[@]}"
stop_when_saved "$job" stopped
finish "$job" 120
latest=$(cat "$work/stopped/qat/checkpoints/latest" 2>/dev/null)
output stopped | grep -o "stop signal received.*"
[ "$state" = COMPLETED ] && [ "$exit" = 0:0 ] && output stopped | grep -q "SIGTERM received: sending SIGUSR1" \
  && output stopped | grep -q "stop signal received: saving a checkpoint" \
  && output stopped | grep -q "rerun with --resume" && [ -n "$latest" ] && [ "$latest" != step-00000064 ] \
  && [ ! -e "$work/stopped/$RESULT" ]
check "SIGTERM to the srun job at step ${latest#step-}: checkpoint saved, COMPLETED, exit 0:0, no student yet" $? \
  || showjob stopped
submit stopped "${JOB_ARGS[@]}" --resume
finish "$job" 120
output stopped | grep -o "resumed from .*"
[ "$state" = COMPLETED ] && [ "$exit" = 0:0 ] && output stopped | grep -q "resumed from .*(step [1-9][0-9]* of 64)" \
  && cmp "$reference" "$work/stopped/$RESULT"
check "the resubmitted job (--resume): COMPLETED, the uninterrupted student byte for byte" $? || showjob stopped

# 3. Under mpirun inside the allocation, with QFORGE_REQUEUE=1: the script turns SIGTERM into SIGUSR1 for mpirun
# (which, like srun, would kill its ranks on SIGTERM), qforge saves, the job requeues itself, and its rerun
# (Restarts=1, --resume added by the script) ends with the same student.
QFORGE_LAUNCHER=mpirun QFORGE_REQUEUE=1 submit requeued "${JOB_ARGS[@]}"
stop_when_saved "$job" requeued
finish "$job" 150
output requeued | grep -o "stop signal received.*\|resumed from .*\|requeueing.*"
[ "$state" = COMPLETED ] && [ "$exit" = 0:0 ] && [ "$(field "$job" Restarts)" = 1 ] \
  && output requeued | grep -q "2 tasks on 1 node(s) by mpirun" \
  && output requeued | grep -q "SIGTERM received: sending SIGUSR1" \
  && output requeued | grep -q "stop signal received: saving a checkpoint" \
  && output requeued | grep -q "requeueing job $job" && output requeued | grep -q "(restart 1):.* qat .* --resume" \
  && output requeued | grep -q "resumed from .*(step [1-9][0-9]* of 64)" && cmp "$reference" "$work/requeued/$RESULT"
check "mpirun job stopped by SIGTERM, requeued, rerun with --resume: COMPLETED, the same student byte for byte" $? \
  || showjob requeued

# 4. Bad input: one error line and a non-zero exit, from the batch script and from local-cluster.sh.
QFORGE_LAUNCHER=mpiexec submit bad env
finish "$job" 60
[ "$state" = FAILED ] && [ "$exit" = 2:0 ] \
  && output bad | grep -q "QFORGE_LAUNCHER must be srun or mpirun, not 'mpiexec'"
check "QFORGE_LAUNCHER=mpiexec: the job FAILED with exit 2 and one line naming it" $? || showjob bad
run "$work/out" "$work/err" -- bash "$cluster_script" down "$work"
[ $code -ne 0 ] && grep -q "is not a state directory of local-cluster.sh up" "$work/err"
check "local-cluster.sh down on a directory it did not make: refused, nothing stopped" $? || show

# 5. Teardown stops every process the cluster started and removes its state.
daemons=$(awk '{print $2}' "$cluster/pids")
run "$work/out" "$work/err" -- bash "$cluster_script" down "$cluster"
left=""
for pid in $daemons; do [ -e "/proc/$pid" ] && left="$left $pid"; done
[ $code -eq 0 ] && [ -z "$left" ] && [ ! -e "$cluster" ]
ok=$?
check "local-cluster.sh down: munged, slurmctld, slurmd ($(echo $daemons)) stopped, state removed" $ok || show
[ $code -eq 0 ] && cluster=""

echo "$passes passed, $failures failed"
[ $failures -eq 0 ]
