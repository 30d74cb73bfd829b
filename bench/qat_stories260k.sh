#!/usr/bin/env bash
# LLM-QAT on the real stories260K model, end to end with qforge: import, a data-free corpus from the teacher,
# then TinyStories-val perplexity (never used for training) of the full-precision teacher, of round-to-nearest
# (quantizers on, no training) and of QAT at each W-A-KV setting. Prints a Markdown table.
# usage: bench/qat_stories260k.sh QFORGE SHARED_DIR WORK_DIR [RANKS] [LR]
set -euo pipefail
QFORGE=$1
SHARED=$2
WORK=$3
RANKS=${4:-2}
LR=${5:-1e-3}
MPI=(mpirun --oversubscribe -np "$RANKS")
TEXT="$SHARED/data/tinystories/tinystories_val.txt"
mkdir -p "$WORK"
cd "$WORK"

[ -f stories/config.json ] || "$QFORGE" convert llama2c --in "$SHARED/models/stories260K/stories260K.bin" \
  --tokenizer "$SHARED/models/stories260K/tok512.bin" --out stories
[ -f corpus.h5 ] || "${MPI[@]}" "$QFORGE" generate --model stories --output corpus.h5 --seq-len 256 --seed 1

ppl() {  # ppl MODEL BITS -> "nll ppl"
  "${MPI[@]}" "$QFORGE" eval ppl --model "$1" --quant "$2" --text "$TEXT" 2>/dev/null \
    | sed -n 's/.*mean NLL \([0-9.]*\) nats\/token, perplexity \([0-9.]*\)/\1 \2/p'
}

read -r fp_nll fp_ppl <<<"$(ppl stories 16-16-16)"
echo "| W-A-KV | RTN ppl (NLL) | QAT ppl (NLL) | QAT gain over RTN | final KD loss | GPTQ checkpoint (bytes) |"
echo "|---|---|---|---|---|---|"
echo "| 16-16-16 (teacher) | $fp_ppl ($fp_nll) | | | | $(du -b stories/model.safetensors | cut -f1) (fp32) |"
for bits in 4-8-4 4-8-8 8-8-4 4-16-16; do
  read -r rtn_nll rtn_ppl <<<"$(ppl stories "$bits")"
  [ -f "qat-$bits/student/model.safetensors" ] || "${MPI[@]}" "$QFORGE" qat --model stories --corpus corpus.h5 \
    --output "qat-$bits" --quant "$bits" --lr "$LR" >"qat-$bits.log" 2>&1
  read -r qat_nll qat_ppl <<<"$(ppl "qat-$bits/student" "$bits")"
  loss=$(sed -n 's/.*"final_loss": \([0-9.]*\).*/\1/p' "qat-$bits/qat.json" | xargs printf "%.4f")
  packed=$(sed -n 's/.*"gptq_bytes": \([0-9]*\).*/\1/p' "qat-$bits/qat.json")
  gain=$(awk -v r="$rtn_ppl" -v q="$qat_ppl" 'BEGIN { printf "%.1f%% lower ppl", 100 * (r - q) / r }')
  echo "| $bits | $rtn_ppl ($rtn_nll) | $qat_ppl ($qat_nll) | $gain | $loss | $packed |"
done
