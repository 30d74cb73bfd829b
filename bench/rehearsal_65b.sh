#!/bin/bash
# A 65B-wide rehearsal on one machine (issue 10; not CI): a random LLaMA with LLaMA-65B's widths (hidden 8192,
# MLP 22016, 64 heads, vocabulary 32000) and one decoder layer, stored bf16 (2.7 GB), under mpirun -np 4 with
# TP 4: load + eval, GPTQ + GPTQ-format export, reload + eval, each command's peak RSS per rank against what
# `qforge plan` predicts for it; then what the planner says of QAT at this width on this machine (24 GB).
#
#   bench/rehearsal_65b.sh build/launch/qforge /tmp/rehearsal [LAYERS=1] [TEXT=../shared/data/tinystories/...]
set -u
QFORGE=$(readlink -f "$1"); WORK=$2; LAYERS=${3:-1}
TEXT=${4:-$(dirname "$0")/../../shared/data/tinystories/tinystories_val.txt}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_btl_vader_single_copy_mechanism=none
MPI=(mpiexec --oversubscribe -np 4)
mkdir -p "$WORK"
if [ -f "$TEXT" ]; then head -c 1200 "$TEXT" >"$WORK/text.txt"; else
  for i in $(seq 1 16); do echo "The quick brown fox $i jumps over the lazy dog near the river bank."; done >"$WORK/text.txt"
fi
TP4=(--set parallel.tp=4 --set runtime.threads=1 --set log.progress_interval_s=30)
PTQ=(--calib "$WORK/text.txt" --nsamples 4 --seq-len 32 --wbits 4 --group-size 128 --set ptq.row_parallel=shard
     --set ptq.hessian_dtype=float32 --set ptq.save=gptq --set ptq.errors=false)
EVAL=(--text "$WORK/text.txt" --seq-len 32 --set eval.batch_size=4)

row() {  # row NAME LOG: the plan and the measured peak of one command, from its log
  local plan peak shard
  plan=$(sed -n 's/.*memory plan: \([0-9.]* [kMG]B\) per rank.*/\1/p' "$2" | head -n 1)
  peak=$(sed -n 's/.*peak RSS per rank: max \([0-9.]* [kMG]B\).*/\1/p' "$2" | tail -n 1)
  printf "| %s | %s | %s | %s |\n" "$1" "${plan:-?}" "${peak:-?}" \
    "$(/usr/bin/python3 -c "import sys
u = {'kB': 1e3, 'MB': 1e6, 'GB': 1e9}
def b(t): v, s = t.split(); return float(v) * u[s]
try: print('%+.1f%%' % (100 * (b(sys.argv[2]) - b(sys.argv[1])) / b(sys.argv[1])))
except Exception: print('?')" "${plan:-0 GB}" "${peak:-0 GB}")"
}

echo "== init-model: 65B widths, $LAYERS layer(s), bf16"
if [ ! -f "$WORK/model/config.json" ]; then
  /usr/bin/time -v "$QFORGE" init-model --out "$WORK/model" --hidden 8192 --intermediate 22016 --heads 64 \
    --kv-heads 64 --layers "$LAYERS" --vocab 32000 --dtype bfloat16 2>"$WORK/init.log" >/dev/null \
    || { cat "$WORK/init.log"; exit 1; }
fi
grep -E "wrote|Maximum resident" "$WORK/init.log"
du -sh "$WORK/model"

echo "== plans (TP 4 on 4 ranks)"
for stage in eval ptq qat; do
  "$QFORGE" plan --model "$WORK/model" --stage "$stage" --ranks 4 "${TP4[@]}" \
    --set ptq.row_parallel=shard --set ptq.hessian_dtype=float32 --set ptq.nsamples=4 --set ptq.seq_len=32 \
    --set ptq.errors=false \
    --set eval.seq_len=32 --set eval.batch_size=4 --set train.micro_batch=1 --set generate.seq_len=32 \
    --set distill.teacher=corpus 2>/dev/null
done | tee "$WORK/plans.txt"

echo "== eval ppl of the bf16 checkpoint, TP 4"
"${MPI[@]}" "$QFORGE" eval ppl --model "$WORK/model" "${EVAL[@]}" "${TP4[@]}" >"$WORK/eval.out" 2>"$WORK/eval.log"
tail -n 1 "$WORK/eval.out"
echo "== ptq: GPTQ w4 g128 (row-parallel shard mode, fp32 Hessians), GPTQ-format export, TP 4"
"${MPI[@]}" "$QFORGE" ptq --model "$WORK/model" --output "$WORK/ptq" "${PTQ[@]}" "${TP4[@]}" >"$WORK/ptq.out" \
  2>"$WORK/ptq.log"
tail -n 3 "$WORK/ptq.out"; du -sh "$WORK/ptq/gptq"
echo "== reload the GPTQ checkpoint and eval, TP 4"
"${MPI[@]}" "$QFORGE" eval ppl --model "$WORK/ptq/gptq" "${EVAL[@]}" "${TP4[@]}" >"$WORK/eval-gptq.out" \
  2>"$WORK/eval-gptq.log"
tail -n 1 "$WORK/eval-gptq.out"

echo "== QAT at this width: does it fit 24 GB on 4 ranks (6 GB a rank)? And TP 1 on one rank (24 GB)?"
"$QFORGE" plan --model "$WORK/model" --stage qat --ranks 4 "${TP4[@]}" --set train.micro_batch=1 \
  --set generate.seq_len=32 --set distill.teacher=corpus --mem-per-rank 6 2>&1 | tail -n 2
"$QFORGE" plan --model "$WORK/model" --stage qat --ranks 1 --set parallel.tp=1 --set train.micro_batch=1 \
  --set generate.seq_len=32 --mem-per-rank 24 2>&1 | tail -n 1

echo
echo "| command (mpirun -np 4, TP 4) | planned per rank | measured peak RSS (worst rank) | measured vs planned |"
echo "|---|---|---|---|"
row "eval ppl, bf16 checkpoint loaded as fp32" "$WORK/eval.log"
row "ptq: GPTQ + GPTQ-format export" "$WORK/ptq.log"
row "eval ppl, GPTQ checkpoint reloaded" "$WORK/eval-gptq.log"
