#!/usr/bin/env bash
# qforge generate survives what a cluster does to it: a resumed corpus equals an uninterrupted run's, sample for
# sample and bit for bit (issue 13, point 1), after kill -9 at random moments, a damaged journal, or one rank of
# two killed; a second job on the same output is locked out; refused settings leave nothing behind; a full disk
# during the final join is one clear error that keeps the journals.
# usage: test_resume_cli.sh QFORGE MPIEXEC SHARED_DIR
set -u
QFORGE=$1
MPIEXEC=$2
SHARED=$3
source "$(dirname "${BASH_SOURCE[0]}")/cli_support.sh"
stories_checkpoint "generate resume"
if ! /usr/bin/python3 -c "import h5py" 2>/dev/null; then
  echo "skip: /usr/bin/python3 has no h5py"
  echo "0 passed, 0 failed"
  exit 0
fi
dump="$(dirname "$0")/../reference/read_corpus.py"

# The case of issue 13: 1200 samples, batch 16, a journal flush every 8 samples (75 groups); the other checks
# make 160 of them (gen) to save time. One thread per process: two fight over a shared CI machine's cores (issue 14).
issue_case() {  # issue_case OUTPUT
  "$QFORGE" generate --model "$work/stories" --output "$1" --num-samples 1200 --seq-len 64 --batch-size 16 \
    --set generate.flush_every=8 --set runtime.threads=1
}
gen() {  # gen RANKS OUTPUT [options...]
  local ranks=$1 out=$2; shift 2
  "${MPI[@]}" -np "$ranks" "$QFORGE" generate --model "$work/stories" --output "$out" --num-samples 160 \
    --seq-len 64 --batch-size 16 --set generate.flush_every=8 --set runtime.threads=1 "$@"
}
journaled() { cat "$1".parts/*.qfcj 2>/dev/null | wc -c; }
same_corpus() {  # same_corpus A B: every sample's length, tokens (CRC) and attributes equal
  /usr/bin/python3 "$dump" "$1" >"$work/a.json" && /usr/bin/python3 "$dump" "$2" >"$work/b.json" \
    && cmp -s "$work/a.json" "$work/b.json"
}

run "$work/out" "$work/err" -- issue_case "$work/issue.h5"
[ $code -eq 0 ] && [ -f "$work/issue.h5" ] && [ ! -e "$work/issue.h5.parts" ]
check "the issue's command, uninterrupted: 1200 samples" $? || show

# 1. The issue's cut: kill -9 once more than 46 samples (about 12 KB of records) are journaled, then rerun.
issue_case "$work/cut.h5" >"$work/out" 2>"$work/err" &
job=$!
for _ in $(seq 1 1000); do [ "$(journaled "$work/cut.h5")" -gt 12500 ] && break; sleep 0.01; done
pkill -9 -f "^$QFORGE generate .*cut.h5"; wait $job 2>/dev/null
echo "killed with $(journaled "$work/cut.h5") bytes journaled"
run "$work/out" "$work/err" -- issue_case "$work/cut.h5"
grep -o "resuming: [0-9]* of 1200 samples" "$work/err"
[ $code -eq 0 ] && grep -q "resuming: [1-9][0-9]* of 1200" "$work/err" && same_corpus "$work/cut.h5" "$work/issue.h5"
check "the issue's cut (kill -9 after the first journal flushes), rerun: the uninterrupted corpus" $? || show

start=$(date +%s%N)
run "$work/out" "$work/err" -- gen 2 "$work/whole.h5"
seconds=$(( ($(date +%s%N) - start) / 1000000 ))e-3
[ $code -eq 0 ] && [ -f "$work/whole.h5" ] && [ ! -e "$work/whole.h5.parts" ]
check "uninterrupted run on 2 ranks: 160 samples in $seconds s" $? || show

# 2. kill -9 at 10 random moments of one job, resumed each time: the same corpus.
delays=""
code=0
for k in $(seq 1 10); do
  delay=$(/usr/bin/python3 -c "import random; print(round(random.uniform(0.6, max(0.8, float('$seconds') / 3)), 2))")
  delays="$delays $delay"
  ranks=$(( k % 2 + 1 ))
  gen $ranks "$work/random.h5" >"$work/out" 2>"$work/err" &
  job=$!
  sleep "$delay"
  victim=$(pgrep -f "^$QFORGE generate .*random.h5" | head -n 1)
  [ -n "$victim" ] && kill -9 "$victim"
  wait $job 2>/dev/null
  [ -f "$work/random.h5" ] && break  # it finished before the kill
done
echo "kill -9 after (seconds):$delays"
[ -f "$work/random.h5" ] || run "$work/out" "$work/err" -- gen 1 "$work/random.h5"
[ $code -eq 0 ] && same_corpus "$work/random.h5" "$work/whole.h5"
check "kill -9 at 10 random moments (1 and 2 ranks), resumed each time: the uninterrupted corpus" $? || show

# 3. A journal damaged mid-way (bytes overwritten in its middle): its tail is dropped, and the rerun regenerates it.
gen 2 "$work/damaged.h5" >"$work/out" 2>"$work/err" &
job=$!
for _ in $(seq 1 1000); do [ "$(journaled "$work/damaged.h5")" -gt 20000 ] && break; sleep 0.01; done
pkill -9 -f "^$QFORGE generate .*damaged.h5"; wait $job 2>/dev/null
journal=$(ls -S "$work"/damaged.h5.parts/*.qfcj | head -n 1)
size=$(stat -c %s "$journal")
printf 'garbage!garbage!' | dd of="$journal" bs=1 seek=$(( size / 2 )) conv=notrunc 2>/dev/null
run "$work/out" "$work/err" -- gen 2 "$work/damaged.h5"
grep -o "journal .* dropped its last [0-9]* bytes" "$work/err"
[ $code -eq 0 ] && grep -q "dropped its last" "$work/err" && same_corpus "$work/damaged.h5" "$work/whole.h5"
check "a journal overwritten mid-way: its tail dropped with a warning, the rerun gives the same corpus" $? || show

# 4. Another batch size or TP size would decode other groups: a resume with one is refused, naming the key.
gen 1 "$work/other.h5" >"$work/out" 2>"$work/err" &
job=$!
for _ in $(seq 1 1000); do [ "$(journaled "$work/other.h5")" -gt 6000 ] && break; sleep 0.01; done
pkill -9 -f "^$QFORGE generate .*other.h5"; wait $job 2>/dev/null
run "$work/out" "$work/err" -- gen 1 "$work/other.h5" --batch-size 8
[ $code -ne 0 ] && [ "$(grep -c '^qforge: error' "$work/err")" -eq 1 ] \
  && grep -q "'attributes.generation.batch_size' is 16 there but 8 now" "$work/err" && [ ! -e "$work/other.h5" ]
check "resume with --batch-size 8 after 16: refused, naming generation.batch_size" $? || show
run "$work/out" "$work/err" -- gen 2 "$work/other.h5" --set parallel.tp=2
[ $code -ne 0 ] && grep -q "'attributes.generation.tp' is 1 there but 2 now" "$work/err"
check "resume with TP 2 after TP 1: refused, naming generation.tp" $? || show

# 5. Two jobs on one output: the second stops at once, naming the lock; the first finishes undisturbed.
gen 1 "$work/locked.h5" >"$work/out1" 2>"$work/err1" &
job=$!
for _ in $(seq 1 1000); do [ -e "$work/locked.h5.parts/.lock" ] && break; sleep 0.01; done
run "$work/out" "$work/err" -- gen 1 "$work/locked.h5"
wait $job; first=$?
[ $code -ne 0 ] && [ "$(grep -c '^qforge: error' "$work/err")" -eq 1 ] \
  && grep -q "another job (process [0-9]*) is writing '$work/locked.h5': it holds the lock" "$work/err" \
  && [ $first -eq 0 ] && same_corpus "$work/locked.h5" "$work/whole.h5"
check "a second generate on the same output: refused naming the lock; the first completes" $? || show

# 6. Settings the teacher cannot run are refused before anything is written; the corrected command then runs.
run "$work/out" "$work/err" -- "$QFORGE" generate --model "$work/stories" --output "$work/refused.h5" \
  --num-samples 16 --seq-len 4096
[ $code -eq 2 ] && grep -q "generate.seq_len 4096 exceeds the teacher's context" "$work/err" \
  && [ ! -e "$work/refused.h5.parts" ] && [ ! -e "$work/refused.h5" ]
check "generate --seq-len 4096 on a 512-token teacher: refused, nothing written" $? || show
run "$work/out" "$work/err" -- "$QFORGE" generate --model "$work/stories" --output "$work/refused.h5" \
  --num-samples 16 --seq-len 64
[ $code -eq 0 ] && [ -f "$work/refused.h5" ]
check "the corrected command then runs" $? || show

# 7. A full disk during the final join (the output on a 16 KiB tmpfs, the journals elsewhere): one error naming
# the file, no corpus and no temporary left, the journals kept; the rerun with space finishes the same corpus.
if unshare -m true 2>/dev/null; then
  mkdir -p "$work/small" "$work/journals"
  full_disk() {  # full_disk RANKS: generate into $work/small (16 KiB), journals in $work/journals
    unshare -m bash -c "mount -t tmpfs -o size=16k tmpfs '$work/small' && ln -s '$work/journals' \
      '$work/small/full.h5.parts' && ${MPI[*]} -np $1 '$QFORGE' generate --model '$work/stories' \
      --output '$work/small/full.h5' --num-samples 160 --seq-len 64 --batch-size 16 --set runtime.threads=1 \
      --set generate.flush_every=8; code=\$?; echo \"files left: \$(ls -A '$work/small' | tr '\n' ' ')\" >&2; \
      exit \$code" >"$work/out" 2>"$work/err"
    code=$?
    grep "^qforge: error\|files left" "$work/err"
    [ $code -ne 0 ] && [ $code -lt 128 ] && [ "$(grep -c '^qforge: error' "$work/err")" -eq 1 ] \
      && grep -q "^qforge: error: .*full.h5.*No space left on device" "$work/err" \
      && grep -q "files left: full.h5.parts $" "$work/err" && [ "$(ls "$work/journals" | grep -c qfcj)" -ge 1 ]
  }
  full_disk 2
  check "disk full while 2 ranks join the corpus: exit $code (no crash), one error naming the file and ENOSPC, \
journals kept" $? || show
  full_disk 1
  check "again as one process (all samples journaled, only the join): exit $code, the same error" $? || show
  mv "$work/journals" "$work/full.h5.parts"
  run "$work/out" "$work/err" -- gen 2 "$work/full.h5"
  [ $code -eq 0 ] && same_corpus "$work/full.h5" "$work/whole.h5"
  check "the rerun with space: the same corpus" $? || show
else
  echo "skip full-disk checks (unshare -m is not permitted here)"
fi

echo "$passes passed, $failures failed"
[ $failures -eq 0 ]
