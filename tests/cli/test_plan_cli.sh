#!/usr/bin/env bash
# End-to-end checks of `qforge plan` (the memory planner) and of the plan and peak RSS every command logs.
# usage: test_plan_cli.sh QFORGE MPIEXEC CONFIGS_DIR
set -u
QFORGE=$1
MPIEXEC=$2
CONFIGS=$3
source "$(dirname "${BASH_SOURCE[0]}")/cli_support.sh"

# 1. A layout that cannot fit: one error naming the largest term and a layout that fits; the table is printed.
run "$work/out" "$work/err" -- "$QFORGE" plan --config "$CONFIGS/llama-65b.yaml" --stage qat --mem-per-rank 24
message="^qforge: error: the qat plan (TP 8 x DP 1, .*) needs .* per rank, more than --mem-per-rank 24 GB;"
message+=" its largest term is AdamW moments (.*): try parallel.tp=[0-9]* .*on [0-9]* ranks"
[ $code -eq 1 ] && [ "$(grep -c '^qforge: error' "$work/err")" -eq 1 ] && grep -q "$message" "$work/err" \
  && grep -q "^total " "$work/out"
check "plan llama-65b qat on 24 GB: exit 1, one error naming the largest term and a layout" $? || show

# 2. A layout that fits: the table of terms and the total, exit 0.
run "$work/out" "$work/err" -- "$QFORGE" plan --config "$CONFIGS/llama-7b.yaml" --stage ptq --ranks 8 --mem-per-rank 80
[ $code -eq 0 ] && grep -q "^ptq of llama-7b (6738415616 parameters) on 8 ranks: TP 1 x DP 8, bfloat16" "$work/out" \
  && grep -q "^weights  *13476831232 " "$work/out" && grep -q "^Hessians " "$work/out" \
  && grep -q "^total " "$work/out"
check "plan llama-7b ptq on 8 x 80 GB: the table and its total" $? || show

# 3. No config file: the architecture alone; every stage by default.
run "$work/out" "$work/err" -- "$QFORGE" plan --architecture opt-6.7b --ranks 2 --set parallel.tp=2
[ $code -eq 0 ] && [ "$(grep -c '^total ' "$work/out")" -eq 4 ] && grep -q "^KV cache " "$work/out"
check "plan --architecture opt-6.7b: the four stages" $? || show

# 4. Bad input: one usage error each, exit 2.
run "$work/out" "$work/err" -- "$QFORGE" plan --architecture llama-7b --stage train
[ $code -eq 2 ] && grep -q "unknown stage 'train' (expected one of: generate, qat, ptq, eval)" "$work/err"
check "plan --stage train: usage error" $? || show
run "$work/out" "$work/err" -- "$QFORGE" plan --architecture llama-8b
[ $code -eq 2 ] && grep -q "model.architecture 'llama-8b' is not a known architecture" "$work/err"
check "plan --architecture llama-8b: usage error listing the architectures" $? || show
run "$work/out" "$work/err" -- "$QFORGE" plan --architecture llama-30b --set parallel.tp=8 --ranks 8
[ $code -eq 2 ] && grep -q "parallel.tp = 8 does not divide the model's 52 attention heads" "$work/err"
check "plan llama-30b with TP 8: usage error" $? || show

# 5. Every command logs its plan at the start and the peak RSS over its ranks at the end.
"$QFORGE" init-model --out "$work/tiny" --hidden 32 --layers 1 --heads 2 --kv-heads 2 >/dev/null 2>&1
run "$work/out" "$work/err" -- "${MPI[@]}" -np 2 "$QFORGE" eval ppl --model "$work/tiny" \
  --text "$CONFIGS/default.yaml" --seq-len 64 --set parallel.tp=2
[ $code -eq 0 ] && grep -q "I memory plan: .* per rank predicted on TP 2 x DP 1, float32" "$work/err" \
  && grep -q "I peak RSS per rank: max .* (rank [01]), min .* (rank [01])" "$work/err"
check "eval logs its memory plan and the peak RSS per rank" $? || show

echo "$passes passed, $failures failed"
[ $failures -eq 0 ]
