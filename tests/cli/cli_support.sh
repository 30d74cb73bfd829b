# Shared by the command-line check scripts (sourced): $QFORGE and $MPIEXEC must be set. Provides MPI (mpiexec
# with oversubscription), $work (a temporary directory removed at exit), check, run, show, the pass/fail counts,
# stories_checkpoint (which also needs $SHARED), and campaign_config and report_figures for `qforge pipeline`.
MPI=("$MPIEXEC" --oversubscribe)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failures=0
passes=0

check() {  # check NAME CONDITION-EXIT-CODE; prints the seconds since the script started, to see where time goes
  local at
  at=$(printf '%4d s' "$SECONDS")
  if [ "$2" -eq 0 ]; then passes=$((passes + 1)); echo "ok   $at  $1"; else failures=$((failures + 1)); echo "FAIL $at  $1"; fi
  return "$2"
}
run() {  # run OUT ERR -- command...: stores exit code in $code
  local out=$1 err=$2; shift 3
  "$@" >"$out" 2>"$err"; code=$?
}
show() { echo "--- stdout"; cat "$work/out"; echo "--- stderr"; cat "$work/err"; }
stories_checkpoint() {  # stories_checkpoint WHAT: exits (a skip) without ../shared, else stories260K in $work/stories
  stories="$SHARED/models/stories260K"
  if [ ! -f "$stories/stories260K.bin" ]; then
    echo "skip $1 checks ($SHARED absent)"
    echo "0 passed, 0 failed"
    exit 0
  fi
  "$QFORGE" convert llama2c --in "$stories/stories260K.bin" --tokenizer "$stories/tok512.bin" --out "$work/stories" \
    2>/dev/null
}
campaign_config() {  # campaign_config MODEL OUTPUT_DIR SAMPLES BATCH SAVE_EVERY: the YAML of a small campaign
  # (W-A-KV 4-8-4): a corpus of SAMPLES samples of 32 tokens, BATCH at a time; 4 epochs of QAT on it, a checkpoint
  # every SAVE_EVERY steps; GPTQ; perplexity of $work/text.txt
  cat <<EOF
model: {path: $1}
output: {dir: $2}
runtime: {threads: 1}
generate: {num_samples: $3, seq_len: 32, batch_size: $4, flush_every: $4}
train: {global_batch: 8, micro_batch: 4, epochs: 4, lr: 1.0e-3, save_every: $5}
ptq: {nsamples: 16, seq_len: 16, group_size: 32}
eval: {text: $work/text.txt, seq_len: 64}
pipeline: {bits: 4-8-4}
EOF
}
# report_figures RUN_DIR: the pipeline's report.json without the stage times and with RUN_DIR as RUN: what must not
# depend on interruptions.
report_figures() { /usr/bin/python3 - "$1" <<'EOF'
import json, sys
report = json.load(open(sys.argv[1] + "/report.json"))
del report["stage_seconds"]
print(json.dumps(report, sort_keys=True).replace(sys.argv[1], "RUN"))
EOF
}
