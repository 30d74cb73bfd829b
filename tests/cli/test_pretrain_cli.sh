#!/usr/bin/env bash
# qforge pretrain end to end on a small slice of the default text (the Jargon File of Debian's jargon-text; the
# repository's docs where it is not installed) with a tiny LLaMA: the checkpoint it writes loads in `qforge eval
# ppl`, its held-out NLL is below the untrained model's, a rerun is served from the finished directory without
# training, SIGTERM saves a checkpoint that the rerun continues from, and bad input is one error with exit code 2.
# usage: test_pretrain_cli.sh QFORGE MPIEXEC
set -u
QFORGE=$1
MPIEXEC=$2
source "$(dirname "${BASH_SOURCE[0]}")/cli_support.sh"

jargon=/usr/share/doc/jargon-text/jargon.txt.gz
if [ -f "$jargon" ]; then
  zcat "$jargon" | head -c 120000 >"$work/text.txt"
else
  echo "($jargon absent: the repository's docs as the text)"
  cat "$(dirname "$0")"/../../docs/*.md | head -c 120000 >"$work/text.txt"
fi
tiny=(--set pretrain.hidden=32 --set pretrain.layers=1 --set pretrain.heads=2 --set pretrain.kv_heads=2
      --set pretrain.seq_len=64 --set pretrain.train.global_batch=8 --set pretrain.train.micro_batch=4
      --set pretrain.train.lr=3e-3 --set pretrain.train.warmup_steps=2 --set pretrain.train.save_every=10
      --set pretrain.eval_batch=16 --set runtime.threads=1)
report() {  # report DIR EXPRESSION: a value of DIR/pretrain.json, e.g. report out "r['heldout']['nll']"
  /usr/bin/python3 -c "import json; r = json.load(open('$1/pretrain.json')); print($2)"
}

# 1. 30 steps on 2 ranks (DP 2): a checkpoint every command loads, and a held-out NLL below the untrained model's.
run "$work/out" "$work/err" -- "${MPI[@]}" -np 2 "$QFORGE" pretrain --text "$work/text.txt" --output "$work/teacher" \
  --max-steps 30 "${tiny[@]}"
ls "$work/teacher" >"$work/files" 2>&1
[ $code -eq 0 ] && grep -q "config.json" "$work/files" && grep -q "model.safetensors" "$work/files" \
  && grep -q "tokenizer.bin" "$work/files" && [ ! -e "$work/teacher.training" ] \
  && [ "$(report "$work/teacher" "r['steps']")" = 30 ]
check "pretrain, 30 steps on 2 ranks: a checkpoint with its tokenizer and pretrain.json, no training state left" $? \
  || show
untrained=$(report "$work/teacher" "round(r['untrained_heldout']['nll'], 4)")
trained=$(report "$work/teacher" "round(r['heldout']['nll'], 4)")
echo "held-out NLL: untrained $untrained, after 30 steps $trained (nats/byte)"
/usr/bin/python3 -c "import sys; sys.exit(not ($trained < $untrained - 1.0))"
check "the held-out NLL drops by more than 1 nat/byte ($untrained -> $trained)" $? || show

# The held-out text it wrote, scored by `qforge eval ppl` on one rank: the NLL that pretrain.json records.
run "$work/out" "$work/err" -- "$QFORGE" eval ppl --model "$work/teacher" --text "$work/teacher/heldout.txt" \
  --seq-len 64
nll=$(grep -o "mean NLL [0-9.]*" "$work/out" | cut -d' ' -f3)
[ $code -eq 0 ] && [ -n "$nll" ] && /usr/bin/python3 -c "import sys; sys.exit(not abs($nll - $trained) < 2e-4)"
check "qforge eval ppl loads the checkpoint: heldout.txt's NLL $nll is pretrain.json's $trained" $? || show

# 2. The same command again: served from the finished directory, nothing trained.
start=$(date +%s%N)
run "$work/out" "$work/err" -- "$QFORGE" pretrain --text "$work/text.txt" --output "$work/teacher" --max-steps 30 \
  "${tiny[@]}"
ms=$(( ($(date +%s%N) - start) / 1000000 ))
[ $code -eq 0 ] && grep -q "already holds this pretrain" "$work/out" \
  && ! grep -q "train: \|checkpoint of step" "$work/err"
check "a rerun on the finished directory trains nothing ($ms ms)" $? || show

# 3. SIGTERM mid-run saves a checkpoint (no output directory appears); the rerun continues from it to the end.
# 300 steps (2 epochs) of 8 single-sample micro-batches: long enough to be stopped.
stopped=("$QFORGE" pretrain --text "$work/text.txt" --output "$work/stopped" --max-steps 300 "${tiny[@]}"
         --set pretrain.train.micro_batch=1 --set pretrain.train.epochs=2)
"${stopped[@]}" >"$work/out" 2>"$work/err" &
job=$!
for _ in $(seq 1 600); do grep -q "checkpoint of step 10 saved" "$work/err" && break; sleep 0.05; done
kill -TERM $job; wait $job; code=$?
[ $code -eq 0 ] && grep -q "rerun the same command to continue" "$work/err" && [ ! -e "$work/stopped" ] \
  && [ -e "$work/stopped.training/checkpoints/latest" ]
check "SIGTERM: a checkpoint in stopped.training, exit 0, no output directory" $? || show
saved=$(grep -o "saving a checkpoint of step [0-9]*" "$work/err" | grep -o "[0-9]*$")
run "$work/out" "$work/err" -- "${stopped[@]}"
[ $code -eq 0 ] && grep -q "resumed from .*(step $saved of 300)" "$work/err" \
  && [ "$(report "$work/stopped" "r['steps']")" = 300 ] && [ "$(report "$work/stopped" "r['resumed']")" = True ]
check "the rerun resumes from step $saved and finishes the 300 steps" $? || show

# 4. Bad input: one line naming the key, exit 2.
one_error() {  # one_error PATTERN: exit 2, one line on stderr matching PATTERN, nothing written
  [ $code -eq 2 ] && [ "$(wc -l <"$work/err")" -eq 1 ] && grep -q "$1" "$work/err" && [ ! -e "$work/bad" ] \
    && [ ! -e "$work/bad.training" ]
}
run "$work/out" "$work/err" -- "$QFORGE" pretrain --text "$work/missing.txt" --output "$work/bad"
one_error "pretrain.text: .*missing.txt does not exist"; check "a missing text: exit 2" $? || show
run "$work/out" "$work/err" -- "$QFORGE" pretrain --text "$work/text.txt" --output "$work/bad" \
  --set pretrain.holdout=1.5
one_error "pretrain.holdout.*in (0, 1)"; check "pretrain.holdout 1.5: exit 2" $? || show
run "$work/out" "$work/err" -- "$QFORGE" pretrain --text "$work/text.txt" --output "$work/bad" "${tiny[@]}" \
  --set pretrain.holdout=0.0001
one_error "pretrain.holdout 0.0001 of .* leaves [0-9]* bytes for evaluation"
check "a held-out part shorter than one window: exit 2" $? || show
run "$work/out" "$work/err" -- "$QFORGE" pretrain --text "$work/text.txt" --output "$work/teacher" --max-steps 31 \
  "${tiny[@]}"
[ $code -eq 2 ] && grep -q "holds a pretrain of other text or settings (pretrain.train.max_steps: 31" "$work/err"
check "other settings on a finished directory: exit 2 naming the key" $? || show

echo "$passes passed, $failures failed"
[ "$failures" -eq 0 ]
