# Shared by the command-line check scripts (sourced): $QFORGE and $MPIEXEC must be set. Provides MPI (mpiexec
# with oversubscription), $work (a temporary directory removed at exit), check, run, show, and the pass/fail
# counts that `finish` reports.
MPI=("$MPIEXEC" --oversubscribe)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failures=0
passes=0

check() {  # check NAME CONDITION-EXIT-CODE
  if [ "$2" -eq 0 ]; then passes=$((passes + 1)); echo "ok   $1"; else failures=$((failures + 1)); echo "FAIL $1"; fi
  return "$2"
}
run() {  # run OUT ERR -- command...: stores exit code in $code
  local out=$1 err=$2; shift 3
  "$@" >"$out" 2>"$err"; code=$?
}
show() { echo "--- stdout"; cat "$work/out"; echo "--- stderr"; cat "$work/err"; }
