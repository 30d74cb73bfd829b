#!/usr/bin/env bash
# The bad-input suite: every kind of malformed input the readers handle, each case asserting the exit code, one
# `qforge: error` line naming the file or key, no crash text, and no output left that looks valid. Fixtures are
# built once (stories260K converted, a tiny init-model, its GPTQ export, a small corpus) and damaged copies derived
# from them by bad_input_fixtures.py; cases run several at a time (qforge's start-up dominates).
# usage: test_bad_input.sh QFORGE MPIEXEC SHARED_DIR [JOBS]   (any qforge binary: run it on an old one to compare)
set -u
QFORGE=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")  # absolute: the cases run in a temporary directory
MPIEXEC=$2
SHARED=$(cd "$3" 2>/dev/null && pwd || echo "$3")
JOBS=${4:-6}
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/cli_support.sh"
if [ "$(id -u)" -eq 0 ]; then
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi
export OMPI_MCA_btl_vader_single_copy_mechanism=none
start=$SECONDS
cd "$work" || exit 1  # anything a case writes by mistake lands in the temporary directory

# ---- fixtures --------------------------------------------------------------------------------------------------
F=$work/fix
mkdir -p "$F" "$work/cases"
stories_checkpoint "bad-input"  # exits (a skip) without ../shared; else $work/stories
mv "$work/stories" "$F/st"
cp "$stories/stories260K.bin" "$stories/tok512.bin" "$F/"
"$QFORGE" init-model --out "$F/tiny" --hidden 32 --layers 1 --heads 2 --kv-heads 1 2>/dev/null
head -c 4000 "$SHARED/data/tinystories/tinystories_val.txt" >"$F/small.txt"
"$QFORGE" ptq --model "$F/tiny" --output "$F/ptq" --method rtn --wbits 4 --group-size 16 2>/dev/null
ln -s "$F/ptq/gptq" "$F/gptq"
"$QFORGE" generate --model "$F/tiny" --output "$F/corpus.h5" --num-samples 4 --seq-len 16 2>/dev/null
if ! /usr/bin/python3 "$here/bad_input_fixtures.py" "$F" || [ ! -f "$F/tiny/config.json" ]; then
  echo "FAIL building the bad-input fixtures"; exit 1
fi
B=$F/bad
echo "fixtures built in $((SECONDS - start)) s"

# ---- the case runner -------------------------------------------------------------------------------------------
# expect NAME CODE 'PART@@PART...' [ABSENT...] -- COMMAND...: runs COMMAND in the background (JOBS at a time).
# CODE is the exit code (or !0: any non-zero one); every PART must appear in the single `qforge: error` line;
# each ABSENT path, and the ".NAME.partial" temporary beside it, must not exist afterwards.
ncases=0
expect() {
  local name=$1 code=$2 parts=$3; shift 3
  local absent=()
  while [ "$1" != -- ]; do absent+=("$1"); shift; done
  shift
  ncases=$((ncases + 1))
  local id
  id=$(printf %03d $ncases)
  while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n; done
  run_case "$id" "$name" "$code" "$parts" "${absent[*]:-}" "$@" &
}

run_case() {
  local id=$1 name=$2 code=$3 parts=$4 absent=$5; shift 5
  local out=$work/cases/$id.out err=$work/cases/$id.err problems=() began=$SECONDS
  timeout 40 "$@" >"$out" 2>"$err"
  local got=$? took=$((SECONDS - began))
  if [ "$code" = '!0' ]; then [ $got -ne 0 ] || problems+=("exit 0, expected non-zero")
  elif [ $got -ne "$code" ]; then problems+=("exit $got, expected $code"); fi
  local lines
  lines=$(grep -c '^qforge: error' "$err")
  [ "$lines" -eq 1 ] || problems+=("$lines 'qforge: error' lines, expected 1")
  local line
  line=$(grep -m1 '^qforge: error' "$err")
  local IFS=$'\n'
  for part in $(printf '%s' "$parts" | sed 's/@@/\n/g'); do
    [[ "$line" == *"$part"* ]] || problems+=("the error does not name '$part'")
  done
  if grep -qE 'terminate called|Aborted|Segmentation fault|Exception raised from|core dumped|basic_filebuf' "$err"; then
    problems+=("crash text on stderr")
  fi
  IFS=' '
  for path in $absent; do
    [ -e "$path" ] && problems+=("$path exists")
    [ -e "$(dirname "$path")/.$(basename "$path").partial" ] && problems+=("a temporary beside $path remains")
  done
  if [ ${#problems[@]} -eq 0 ]; then
    printf 'ok   %3d s  %s\n' "$took" "$name" >"$work/cases/$id.result"
  else
    { printf 'FAIL %3d s  %s: %s\n' "$took" "$name" "$(IFS=';'; echo "${problems[*]}")"; echo "     \$ ${*: -$#}" | cut -c1-300
      sed 's/^/     | /' "$err" | grep -v '^     | \[' | head -5; } >"$work/cases/$id.result"
  fi
}

# Full disk, for real: a 64 KiB tmpfs in a private mount namespace (unshare -m). enospc NAME DIR_ARG COMMAND...
# runs COMMAND with @OUT@ replaced by a path in that tmpfs (filled first when DIR_ARG is "full"); afterwards the
# tmpfs must hold nothing but the filler. Skipped where mount namespaces are unavailable.
if unshare -m true 2>/dev/null && unshare -m sh -c "mount -t tmpfs -o size=64k tmpfs '$work/cases'" 2>/dev/null; then
  have_tmpfs=1
else
  have_tmpfs=0
fi
enospc() {
  local name=$1 fill=$2; shift 2
  if [ $have_tmpfs -eq 0 ]; then echo "skip $name (no mount namespace for a small tmpfs)"; return; fi
  local mnt=$work/tmpfs$ncases
  mkdir -p "$mnt"
  local script='mount -t tmpfs -o size=64k tmpfs "$0" || exit 99
    [ "$1" = full ] && { dd if=/dev/zero of="$0/filler" bs=4k 2>/dev/null; }
    shift; "$@"; code=$?
    left=$(ls -A "$0" | grep -vx filler | tr "\n" " ")
    [ -z "$left" ] || echo "qforge: error: (the test) left on the full disk: $left" >&2
    exit $code'
  local args=()
  for a in "$@"; do args+=("${a//@OUT@/$mnt/out}"); done
  expect "$name" '!0' "No space left on device" -- unshare -m bash -c "$script" "$mnt" "$fill" "${args[@]}"
}

source "$here/bad_input_cases.sh"

wait
failures=0
passes=0
for result in "$work/cases"/*.result; do
  cat "$result"
  if grep -q '^ok ' "$result"; then passes=$((passes + 1)); else failures=$((failures + 1)); fi
done
echo "$passes passed, $failures failed of $ncases cases in $((SECONDS - start)) s"
[ "$failures" -eq 0 ] && [ $((passes + failures)) -eq "$ncases" ]
