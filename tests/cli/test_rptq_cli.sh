#!/usr/bin/env bash
# End-to-end checks of `qforge ptq --method rptq` on the real stories260K model (../shared): the RPTQ checkpoint
# (reordered weights, rptq.safetensors, quant_method rptq), the same model from TP 2 x DP 2 as from one process,
# RPTQ below per-tensor activations at A4, `eval ppl` of the saved model with its static quantizers, and one
# clear error for bad settings and damaged files. usage: test_rptq_cli.sh QFORGE MPIEXEC SHARED_DIR
set -u
QFORGE=$1
MPIEXEC=$2
SHARED=$3
source "$(dirname "${BASH_SOURCE[0]}")/cli_support.sh"
reference="$(dirname "${BASH_SOURCE[0]}")/../reference"

stories_checkpoint rptq
text="$SHARED/data/tinystories/tinystories_val.txt"
head -c 200000 "$text" >"$work/eval.txt"
rptq() {  # rptq RANKS OUTDIR [options...]
  local ranks=$1 out=$2; shift 2
  "${MPI[@]}" -np "$ranks" "$QFORGE" ptq --method rptq --model "$work/stories" --output "$out" --calib "$text" \
    --nsamples 32 --seq-len 256 --set runtime.threads=1 --set log.progress_interval_s=0 "$@"
}

# 1. W4A4 on one process: the checkpoint, and the perplexity of the same weights under each activation scheme.
run "$work/out" "$work/err" -- rptq 1 "$work/one" --setting W4A4 --set eval.text="$work/eval.txt" \
  --set eval.seq_len=256
rptq_ppl=$(sed -n 's/.*rptq \([0-9.]*\)$/\1/p' "$work/out")
tensor_ppl=$(sed -n 's/.*per_tensor \([0-9.]*\), rptq.*/\1/p' "$work/out")
[ $code -eq 0 ] && [ -f "$work/one/model.safetensors" ] && [ -f "$work/one/rptq.safetensors" ] \
  && grep -q '"quant_method": "rptq"' "$work/one/config.json" && [ -f "$work/one/tokenizer.bin" ] \
  && /usr/bin/python3 -c "import sys; a, b = map(float, sys.argv[1:]); sys.exit(not a < b)" "$rptq_ppl" "$tensor_ppl"
check "ptq --method rptq --setting W4A4: checkpoint; rptq ppl $rptq_ppl below per-tensor $tensor_ppl" $? || show
grep "perplexity on" "$work/out"

# 2. The same under TP 2 x DP 2 (4 ranks): the same reorders, activation parameters and weights as one process.
run "$work/out" "$work/err" -- rptq 4 "$work/tp2" --setting W4A4 --set parallel.tp=2
tp2_code=$code
same=$(/usr/bin/python3 "$reference/compare_weights.py" "$work/one/model.safetensors" "$work/tp2/model.safetensors" \
  0.999 2>&1); equal=$?
extras=$(/usr/bin/python3 "$reference/compare_rptq.py" "$work/one/rptq.safetensors" "$work/tp2/rptq.safetensors" \
  2>&1); extras_equal=$?
[ $tp2_code -eq 0 ] && [ $equal -eq 0 ] && [ $extras_equal -eq 0 ]
check "mpirun -np 4 ptq --method rptq --set parallel.tp=2 gives one process's model: $same; $extras" $? || show

# 3. eval ppl runs the saved model with its stored static quantizers: the ptq run's rptq perplexity (to 1e-3: at
# 4 bits an activation a rounding away from a step boundary can take the other code in another BLAS order).
run "$work/out" "$work/err" -- "$QFORGE" eval ppl --model "$work/one" --text "$work/eval.txt" --seq-len 256 \
  --set runtime.threads=1
eval_ppl=$(sed -n 's/^perplexity of.* \([0-9.]*\)$/\1/p' "$work/out")
[ $code -eq 0 ] && /usr/bin/python3 -c "import sys; a, b = map(float, sys.argv[1:]); sys.exit(abs(a - b) > 1e-3 * a)" \
  "$eval_ppl" "$rptq_ppl"
check "eval ppl --model OUT (static quantizers reloaded): $eval_ppl vs $rptq_ppl in the ptq run" $? || show

# 3b. The same model from OUT/gptq (weights in the GPTQ checkpoint format inside RPTQ's). The format holds every
# other tensor in fp16 (a relative 5e-4 each) and 4-bit activations that such differences tip take the next code:
# the perplexity within 3% (measured: 1.4%); stories260K's MLP width of 172 does not pack (kept fp16, named).
run "$work/out" "$work/err" -- "$QFORGE" eval ppl --model "$work/one/gptq" --text "$work/eval.txt" --seq-len 256 \
  --set runtime.threads=1
packed_ppl=$(sed -n 's/^perplexity of.* \([0-9.]*\)$/\1/p' "$work/out")
[ $code -eq 0 ] && grep -q '"weights_format": "gptq"' "$work/one/gptq/config.json" \
  && [ -f "$work/one/gptq/rptq.safetensors" ] && [ -f "$work/one/gptq/quantize_config.json" ] \
  && /usr/bin/python3 -c "import sys; a, b = map(float, sys.argv[1:]); sys.exit(abs(a - b) > 3e-2 * a)" \
       "$packed_ppl" "$rptq_ppl"
check "OUT/gptq (GPTQ-packed weights, reorders, quantizers) reloads: ppl $packed_ppl vs $rptq_ppl (rel tol 3e-2)" $? \
  || show

# 4. Bad settings: one error line each, exit 2, nothing written.
bad() {  # bad NAME EXPECTED-TEXT [ptq options...]
  local name=$1 expected=$2; shift 2
  rm -rf "$work/bad"
  run "$work/out" "$work/err" -- "$QFORGE" ptq --method rptq --model "$work/stories" --output "$work/bad" \
    --calib "$text" --nsamples 4 "$@"
  [ $code -eq 2 ] && [ "$(grep -c '^qforge: error' "$work/err")" -eq 1 ] && grep -q -- "$expected" "$work/err" \
    && [ ! -e "$work/bad/model.safetensors" ]
  check "$name: one error naming $expected, exit 2, no model" $? || show
}
bad "--setting W4A5" "rptq.setting.*W4A16, W4A8, W4A4, W4A4KV, W4A3KV, W3A3KV, got 'W4A5'" --setting W4A5
bad "65 clusters of 64 channels" "rptq.r1_clusters = 65 is more clusters than the 64" --set rptq.r1_clusters=65
bad "R2 over 4 rotate-half pairs" "rptq.r2_clusters = 5 .* 4 rotate-half pairs" --set rptq.r2_clusters=5
bad "act_bits 9" "rptq.act_bits" --set rptq.act_bits=9
bad "act_bits 1" "rptq.act_bits" --set rptq.act_bits=1
bad "reorder R6" "rptq.reorder" --set "rptq.reorder=[R1,R6]"
bad "compare fp" "rptq.compare" --set "rptq.compare=[fp]"
bad "cluster weight ranges, GPTQ format" "rptq.weight_ranges clusters.*ptq.save=fake" \
  --set rptq.weight_ranges=clusters
bad "rptq without calibration" "needs calibration" --calib ""

# 5. Damaged RPTQ files: one clear error naming the file, exit non-zero.
cp -r "$work/one" "$work/damaged"
rm "$work/damaged/rptq.safetensors"
run "$work/out" "$work/err" -- "$QFORGE" eval ppl --model "$work/damaged" --text "$work/eval.txt" --seq-len 256
[ $code -ne 0 ] && [ "$(grep -c '^qforge: error' "$work/err")" -eq 1 ] \
  && grep -q "rptq.safetensors.*missing" "$work/err"
check "a missing rptq.safetensors: one error naming it" $? || show
/usr/bin/python3 "$reference/compare_rptq.py" --swap-first-index "$work/one/rptq.safetensors" \
  "$work/damaged/rptq.safetensors"
run "$work/out" "$work/err" -- "$QFORGE" eval ppl --model "$work/damaged" --text "$work/eval.txt" --seq-len 256
[ $code -ne 0 ] && [ "$(grep -c '^qforge: error' "$work/err")" -eq 1 ] && grep -q "is not a permutation" "$work/err"
check "an output index that is not a permutation: one error naming it" $? || show

echo "$passes passed, $failures failed"
[ $failures -eq 0 ]
