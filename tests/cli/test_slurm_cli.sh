#!/usr/bin/env bash
# qforge under a real Slurm (issue 15, points 4 and 5): launch/slurm/local-cluster.sh brings up munged, slurmctld
# and slurmd on this machine; launch/slurm/qforge.sbatch runs a small `qforge pipeline` (generate -> qat -> ptq ->
# eval) on 2 tasks to completion under srun; a job stopped by SIGTERM (what Slurm sends before the time limit) inside
# QAT saves a checkpoint and exits 0, and the resubmitted job finishes with the uninterrupted job's report and QAT
# student; under mpirun the stopped job requeues itself and its rerun finishes with them too; launch/slurm/
# pipeline.sbatch (the multi-node template, on 1 node and no GPUs here) stopped after QAT requeues itself and ends
# the same. The cluster is always taken down, and only its processes are stopped.
# Exit 77 (a CTest skip) only where Slurm cannot be installed or run (not root).
# usage: test_slurm_cli.sh QFORGE MPIEXEC
set -u
QFORGE=$1
MPIEXEC=$2
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$here/cli_support.sh"
cluster_script="$here/../../launch/slurm/local-cluster.sh"
sbatch_script="$here/../../launch/slurm/qforge.sbatch"
pipeline_script="$here/../../launch/slurm/pipeline.sbatch"

# The job every sbatch below runs, in one place: qforge's arguments (each job runs in its own directory, --chdir,
# and the campaign's output.dir, `run`, is relative to it). The campaign (campaign_config): a 128-sample corpus from a random
# 2-layer teacher, 64 steps of QAT with a checkpoint every 8 (the test stops jobs once one exists, so that the stop
# lands inside QAT), GPTQ, and perplexity of the four rows. A job that was stopped and resumed must end with the
# uninterrupted job's REPORT (see figures) and its QAT student (RESULT) byte for byte.
JOB_ARGS=(pipeline --config "$work/pipeline.yaml")
REPORT=run/report.json
RESULT=run/qat/4-8-4/student/model.safetensors
FIRST_CHECKPOINT=run/qat/4-8-4/checkpoints/step-00000008
figures() { report_figures "$work/$1/run"; }  # figures NAME: job NAME's report, as report_figures
# perplexities NAME: the rows of job NAME's report, to print.
perplexities() { /usr/bin/python3 - "$work/$1/$REPORT" <<'EOF'
import json, sys
rows = json.load(open(sys.argv[1]))["rows"]
print("  ".join(f"{r['kind']} {r['bits']}: ppl {r['perplexity']['perplexity']:.2f}" for r in rows))
EOF
}

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
  && head -c 6000 "$here/../../README.md" >"$work/text.txt" \
  && campaign_config "$work/model" run 128 16 8 >"$work/pipeline.yaml"
check "a random teacher, a text to evaluate on and the campaign's config" $? || exit 1

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
finish "$job" 150
reference="$work/whole/$RESULT"
[ "$state" = COMPLETED ] && [ "$exit" = 0:0 ] && [ -f "$reference" ] && [ -f "$work/whole/$REPORT" ] \
  && output whole | grep -q "2 tasks on 1 node(s) by srun --mpi=pmix" \
  && output whole | grep -q '\[.* r0/2\] I pipeline: eval/ptq-4-8-4 -> run' \
  && [ -s "$work/whole/logs/qforge-$job-rank-0.log" ] && [ -s "$work/whole/logs/qforge-$job-rank-1.log" ]
check "sbatch -n 2 qforge.sbatch pipeline (srun): COMPLETED, exit 0:0, 2 ranks, report, student, a log per rank" $? \
  || showjob whole
grep -h "qat: 64 steps" "$work/whole/job.out"
perplexities whole
base=$(figures whole)

# 2. SIGTERM to the batch script inside QAT (scancel --signal=TERM --batch: what --signal=B:TERM@300 does before
# the time limit): forwarded to the ranks, a checkpoint, "stopped in qat/4-8-4", exit 0, no report; the resubmitted
# job (the same command: the pipeline resumes by itself) ends with the uninterrupted report and student.
submit stopped "${JOB_ARGS[@]}"
stop_when_saved "$job" stopped
finish "$job" 150
latest=$(cat "$work/stopped/run/qat/4-8-4/checkpoints/latest" 2>/dev/null)
output stopped | grep -o "stop signal received.*\|pipeline: stopped in.*"
[ "$state" = COMPLETED ] && [ "$exit" = 0:0 ] && output stopped | grep -q "SIGTERM received: sending SIGUSR1" \
  && output stopped | grep -q "stop signal received: saving a checkpoint" \
  && output stopped | grep -q "pipeline: stopped in qat/4-8-4; its progress is saved" \
  && [ -n "$latest" ] && [ "$latest" != step-00000064 ] && [ ! -e "$work/stopped/$RESULT" ] \
  && [ ! -e "$work/stopped/$REPORT" ] && ! output stopped | grep -q requeueing
check "SIGTERM to the srun job at QAT step ${latest#step-}: checkpoint saved, COMPLETED, exit 0:0, no report yet" $? \
  || showjob stopped
submit stopped "${JOB_ARGS[@]}"
finish "$job" 150
output stopped | grep -o "pipeline: qat/4-8-4 -> resume.*\|resumed from .*"
[ "$state" = COMPLETED ] && [ "$exit" = 0:0 ] && output stopped | grep -q "pipeline: generate -> skip" \
  && output stopped | grep -q "pipeline: qat/4-8-4 -> resume" \
  && output stopped | grep -q "resumed from .*(step [1-9][0-9]* of 64)" \
  && [ -f "$work/stopped/$REPORT" ] && [ "$(figures stopped)" = "$base" ] && cmp "$reference" "$work/stopped/$RESULT"
check "the resubmitted job: COMPLETED, QAT resumed, the uninterrupted report and student byte for byte" $? \
  || showjob stopped

# 3. Under mpirun inside the allocation, with QFORGE_REQUEUE=1: the script turns SIGTERM into SIGUSR1 for mpirun
# (which, like srun, would kill its ranks on SIGTERM), QAT saves, the pipeline says it stopped, the job requeues
# itself, and its rerun (Restarts=1, the same command: no --resume for a pipeline) ends with the same report.
QFORGE_LAUNCHER=mpirun QFORGE_REQUEUE=1 submit requeued "${JOB_ARGS[@]}"
stop_when_saved "$job" requeued
finish "$job" 180
output requeued | grep -o "pipeline: stopped in [^;]*\|requeueing.*\|resumed from .*"
[ "$state" = COMPLETED ] && [ "$exit" = 0:0 ] && [ "$(field "$job" Restarts)" = 1 ] \
  && output requeued | grep -q "2 tasks on 1 node(s) by mpirun" \
  && output requeued | grep -q "SIGTERM received: sending SIGUSR1" \
  && output requeued | grep -q "pipeline: stopped in qat/4-8-4" \
  && output requeued | grep -q "requeueing job $job (the pipeline stopped in QAT" \
  && output requeued | grep -q "(restart 1):.* pipeline --config [^ ]*pipeline.yaml$" \
  && output requeued | grep -q "resumed from .*(step [1-9][0-9]* of 64)" \
  && [ "$(figures requeued)" = "$base" ] && cmp "$reference" "$work/requeued/$RESULT"
check "mpirun job stopped in QAT, requeued, rerun as is: COMPLETED, the same report and student byte for byte" $? \
  || showjob requeued

# 4. pipeline.sbatch (the multi-node GPU template) on this node: 1 node x 2 tasks, no GPUs, 1 CPU each. Stopped
# after QAT (SIGUSR1 ends the ranks in PTQ or evaluation: exit 138), it requeues itself (QFORGE_REQUEUE=1 is its
# default) and the rerun ends with the same report.
mkdir -p "$work/template"
job=$(cd "$work/template" && sbatch --parsable --nodes=1 --ntasks-per-node=2 --gpus-per-node=0 --cpus-per-task=1 \
  --time=60 "$pipeline_script" "$work/pipeline.yaml")  # over 10 minutes: its SIGTERM comes 600 s before the limit
template() { cat "$work/template/qforge-pipeline-$job.out" 2>/dev/null; }
for _ in $(seq 1 2400); do template | grep -q "pipeline: ptq/4-8-4 -> run" && break; sleep 0.05; done
scancel --signal=TERM --batch "$job"
finish "$job" 180
stopped_in=$(template | sed -n '/SIGTERM received/q;s/.* I pipeline: \([^ ]*\) -> run.*/\1/p' | tail -n 1)
template | grep -o "ranks ended with exit code 138\|requeueing.*"
[ "$state" = COMPLETED ] && [ "$exit" = 0:0 ] && [ "$(field "$job" Restarts)" = 1 ] \
  && template | grep -q "ranks ended with exit code 138" \
  && template | grep -q "requeueing job $job (SIGUSR1 ended the ranks)" \
  && template | grep -q "pipeline: qat/4-8-4 -> skip" \
  && [ -s "$work/template/logs/$job/qforge-$job-rank-1.log" ] \
  && [ "$(figures template)" = "$base" ] && cmp "$reference" "$work/template/$RESULT"
check "pipeline.sbatch -N 1 --ntasks-per-node=2 --gpus-per-node=0, stopped in $stopped_in: requeued, the same report" \
  $? || { echo "--- template"; template | tail -n 30; }

# 5. Bad input: one error line and a non-zero exit, from the batch script and from local-cluster.sh.
QFORGE_LAUNCHER=mpiexec submit bad env
finish "$job" 60
[ "$state" = FAILED ] && [ "$exit" = 2:0 ] \
  && output bad | grep -q "QFORGE_LAUNCHER must be srun or mpirun, not 'mpiexec'"
check "QFORGE_LAUNCHER=mpiexec: the job FAILED with exit 2 and one line naming it" $? || showjob bad
run "$work/out" "$work/err" -- bash "$cluster_script" down "$work"
[ $code -ne 0 ] && grep -q "is not a state directory of local-cluster.sh up" "$work/err"
check "local-cluster.sh down on a directory it did not make: refused, nothing stopped" $? || show

# 6. Teardown stops every process the cluster started and removes its state.
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
