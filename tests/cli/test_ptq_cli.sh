#!/usr/bin/env bash
# End-to-end checks of `qforge ptq` on the real stories260K model (../shared): GPTQ calibrated on a text and on a
# qforge corpus, the same weights under TP 2 x DP 2 as in one process, eval of the result, and one clear error for
# every bad setting. usage: test_ptq_cli.sh QFORGE MPIEXEC SHARED_DIR
set -u
QFORGE=$1
MPIEXEC=$2
SHARED=$3
source "$(dirname "${BASH_SOURCE[0]}")/cli_support.sh"
compare="$(dirname "${BASH_SOURCE[0]}")/../reference/compare_weights.py"

stories_checkpoint ptq
text="$SHARED/data/tinystories/tinystories_val.txt"
ptq() {  # ptq RANKS OUTDIR [options...]
  local ranks=$1 out=$2; shift 2
  "${MPI[@]}" -np "$ranks" "$QFORGE" ptq --model "$work/stories" --output "$out" --nsamples 32 --seq-len 256 \
    --set runtime.threads=1 --set log.progress_interval_s=0 "$@"
}

# 1. GPTQ W4 g16 act-order on text, one process: a loadable checkpoint, ptq.json, progress per layer.
run "$work/out" "$work/err" -- ptq 1 "$work/one" --calib "$text" --wbits 4 --group-size 16 --act-order
linears=$(/usr/bin/python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print(len(r['linears']), \
  sum(l['error'] < l['rtn_error'] for l in r['linears']))" "$work/one/ptq.json" 2>/dev/null)
[ $code -eq 0 ] && [ -f "$work/one/model.safetensors" ] && [ -f "$work/one/tokenizer.bin" ] \
  && [ "$linears" = "35 35" ] && grep -q "ptq: 5/5 layers (100.0%)" "$work/err" \
  && grep -q "reconstruction error sum" "$work/out"
check "ptq w4 g16 act-order on text: 35 linears, each below RTN (${linears}), checkpoint and ptq.json" $? || show
grep "reconstruction error" "$work/out"

# 2. The same under TP 2 x DP 2: the same quantized weights as one process.
run "$work/out" "$work/err" -- ptq 4 "$work/tp2" --calib "$text" --wbits 4 --group-size 16 --act-order \
  --set parallel.tp=2
tp2_code=$code
same=$(/usr/bin/python3 "$compare" "$work/one/model.safetensors" "$work/tp2/model.safetensors" 0.999 2>&1); equal=$?
[ $tp2_code -eq 0 ] && [ $equal -eq 0 ]
check "mpirun -np 4 ptq --set parallel.tp=2 gives one process's weights: $same" $? || show

# 3. Perplexity of the quantized model.
run "$work/out" "$work/err" -- "$QFORGE" eval ppl --model "$work/one" --text "$text" --seq-len 256
[ $code -eq 0 ] && grep -q "^perplexity of" "$work/out"
check "eval ppl of the GPTQ model: $(grep -o 'perplexity [0-9.]*$' "$work/out")" $? || show
fake_ppl=$(sed -n 's/^perplexity of.* \([0-9.]*\)$/\1/p' "$work/out")

# 3b. The same model from its GPTQ checkpoint (output.dir/gptq): the perplexity within the fp16 rounding of the
# scales (stories260K's MLP widths of 172 do not pack: those linears are kept fp16 and named in the config).
run "$work/out" "$work/err" -- "$QFORGE" eval ppl --model "$work/one/gptq" --text "$text" --seq-len 256
gptq_ppl=$(sed -n 's/^perplexity of.* \([0-9.]*\)$/\1/p' "$work/out")
[ $code -eq 0 ] && grep -q '"checkpoint_format": "gptq"' "$work/one/gptq/config.json" \
  && grep -q 'down_proj' "$work/one/gptq/config.json" \
  && /usr/bin/python3 -c "import sys; a, b = map(float, sys.argv[1:]); sys.exit(abs(a - b) > 1e-3 * a)" \
       "$fake_ppl" "$gptq_ppl"
check "GPTQ-format checkpoint reloads: ppl $gptq_ppl vs $fake_ppl fake-quantized (rel tol 1e-3)" $? || show

# 4. Data-free calibration on a corpus that qforge generated from the model.
"${MPI[@]}" -np 2 "$QFORGE" generate --model "$work/stories" --output "$work/corpus.h5" --num-samples 40 \
  --seq-len 128 --set generate.stop_at_eos=false --set runtime.threads=1 >/dev/null 2>&1
run "$work/out" "$work/err" -- ptq 2 "$work/free" --calib-corpus "$work/corpus.h5" --wbits 3 --seq-len 0
[ $code -eq 0 ] && grep -q "32 sequences of 128 tokens (random windows) from corpus" "$work/err" \
  && [ -f "$work/free/model.safetensors" ]
check "ptq --calib-corpus (data-free) on 2 ranks" $? || show

# 5. Bad settings: one error line each, exit 2, nothing written.
bad() {  # bad NAME EXPECTED-TEXT [ptq options...]
  local name=$1 expected=$2; shift 2
  rm -rf "$work/bad"
  run "$work/out" "$work/err" -- "$QFORGE" ptq --model "$work/stories" --output "$work/bad" "$@"
  [ $code -eq 2 ] && [ "$(grep -c '^qforge: error' "$work/err")" -eq 1 ] && grep -q -- "$expected" "$work/err" \
    && [ ! -e "$work/bad/model.safetensors" ]
  check "$name: one error naming $expected, exit 2, no model" $? || show
}
bad "--wbits 1" "ptq.wbits" --calib "$text" --wbits 1
bad "--wbits 9" "ptq.wbits" --calib "$text" --wbits 9
bad "--group-size 0" "ptq.group_size" --calib "$text" --group-size 0
bad "--group-size 100 (> 64 columns)" "ptq.group_size.*model.layers.0.self_attn.q_proj.*got 100" --calib "$text" \
  --group-size 100
head -c 300 "$text" >"$work/short.txt"
bad "too little calibration text" "short.txt: [0-9]* tokens are too few" --calib "$work/short.txt"
bad "gptq without calibration data" "needs calibration data"
bad "both a text and a corpus" "both set" --calib "$text" --calib-corpus "$work/corpus.h5"
"$QFORGE" init-model --out "$work/bytes" 2>/dev/null
run "$work/out" "$work/err" -- "$QFORGE" ptq --model "$work/bytes" --output "$work/bad" --calib-corpus "$work/corpus.h5"
[ $code -ne 0 ] && [ "$(grep -c '^qforge: error' "$work/err")" -eq 1 ] && grep -q "corpus.h5" "$work/err" \
  && [ ! -e "$work/bad/model.safetensors" ]
check "a corpus of another vocabulary: one error naming the file" $? || show

echo "$passes passed, $failures failed"
[ $failures -eq 0 ]
