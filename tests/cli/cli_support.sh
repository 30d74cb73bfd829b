# Shared by the command-line check scripts (sourced): $QFORGE and $MPIEXEC must be set. Provides MPI (mpiexec
# with oversubscription), $work (a temporary directory removed at exit), check, run, show, the pass/fail counts,
# and stories_checkpoint (which also needs $SHARED).
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
