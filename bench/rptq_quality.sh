#!/usr/bin/env bash
# RPTQ's quality table: perplexity of W4A16, W4A8, W4A4, W4A4KV, W4A3KV, W3A3KV,
# with the same GPTQ weights under static per-tensor activations (what RPTQ improves on) and under RPTQ's
# per-cluster ones (one `ptq --method rptq` run per setting and text measures both), on:
#   stories260K (../shared) on WikiText-2 and TinyStories-val; a random OPT and a random LLaMA (GQA) with outlier
#   channels planted in every norm (init-model --outliers: 4 of 128 channels 10-50x larger, as real OPT models have
#   them; --std 0.15: with init-model's default 0.3 a random model's perplexity on its own samples exceeds the
#   vocabulary's 259, chaos that no quantizer's error predicts), on their own samples (below); and, when given, a
#   QAT student of stories260K (the mission's chain: QAT 4-8-4, then RPTQ + GPTQ; bench/qat_stories260k.sh makes
#   one).
# Calibration (trained models): 128 windows of 256 tokens of the C4 validation documents (neither evaluation text).
# Evaluation: the first 100,000 bytes of each text (the whole of both takes 15x longer on 2 cores), windows of 256.
# Prints Markdown.
# usage: bench/rptq_quality.sh QFORGE SHARED_DIR WORK_DIR [RANKS] [QAT_STUDENT_DIR]
set -euo pipefail
QFORGE=$1
SHARED=$2
WORK=$3
RANKS=${4:-2}
STUDENT=${5:-}
MPI=(mpirun --oversubscribe -np "$RANKS")
TINY="$WORK/tinystories-100k.txt"
WIKI="$WORK/wikitext2-100k.txt"
SETTINGS=(W4A16 W4A8 W4A4 W4A4KV W4A3KV W3A3KV)
mkdir -p "$WORK/out"
cd "$WORK"
head -c 100000 "$SHARED/data/tinystories/tinystories_val.txt" >"$TINY"
head -c 100000 "$SHARED/data/wikitext-2/wiki.test.raw" >"$WIKI"

[ -f stories/config.json ] || "$QFORGE" convert llama2c --in "$SHARED/models/stories260K/stories260K.bin" \
  --tokenizer "$SHARED/models/stories260K/tok512.bin" --out stories 2>/dev/null
[ -f random-opt/config.json ] || "$QFORGE" init-model --family opt --out random-opt --hidden 128 --layers 4 \
  --heads 8 --intermediate 512 --outliers 4 --seed 1 --std 0.15 2>/dev/null
[ -f random-llama/config.json ] || "$QFORGE" init-model --out random-llama --hidden 128 --layers 4 --heads 8 \
  --kv-heads 2 --intermediate 352 --outliers 4 --seed 2 --std 0.15 2>/dev/null
[ -f c4.txt ] || /usr/bin/python3 -c \
  "import json,sys; print('\n\n'.join(json.loads(l)['text'] for l in open(sys.argv[1])))" \
  "$SHARED/data/c4/c4_validation_2k.jsonl" >c4.txt

fp() {  # fp MODEL TEXT -> perplexity
  "${MPI[@]}" "$QFORGE" eval ppl --model "$1" --text "$2" --seq-len 256 2>/dev/null \
    | sed -n 's/.*perplexity \([0-9.]*\)$/\1/p'
}
rptq() {  # rptq MODEL SETTING TEXT CALIBRATION -> "per-tensor rptq"
  local out="out/$(basename "$1")-$2-$(basename "$3")"
  [ -f "$out/ptq.json" ] || "${MPI[@]}" "$QFORGE" ptq --method rptq --model "$1" --output "$out" --setting "$2" \
    --calib "$4" --nsamples 128 --seq-len 256 --set eval.text="$3" --set eval.seq_len=256 --set ptq.save=fake \
    --set "rptq.compare=[per_tensor,rptq]" >"$out.log" 2>&1
  /usr/bin/python3 -c "import json,sys; p=json.load(open(sys.argv[1]))['perplexity']['by_activations']; \
print(f\"{p['per_tensor']:.3f} {p['rptq']:.3f}\")" "$out/ptq.json"
}

# A random model's perplexity on real text measures nothing (the FP OPT's is about 1e7, and quantization noise
# "improves" it): it is measured on 15,000 tokens the FP model itself sampled (temperature 1, 30 samples of 500),
# and calibrated on 30 other samples (seeds 101..130): C4 is as foreign to it as random bytes, and static ranges
# calibrated there clip its own activations.
# The evaluation's windows of 256 do not start where the samples do, so the FP figure is not the model's entropy
# and weight-only noise can still lower it (W4A16 below FP); activation quantization raises it steeply.
own_samples() {  # own_samples MODEL FIRST_SEED -> FILE
  local file="$(basename "$1")-samples-$2.txt"
  if [ ! -f "$file" ]; then
    for seed in $(seq "$2" $(($2 + 29))); do
      "$QFORGE" generate-text --model "$1" --prompt "The" --max-new-tokens 500 --temperature 1 --seed "$seed" \
        2>/dev/null
    done >"$file"
  fi
  echo "$PWD/$file"
}

models=(random-opt random-llama stories)
[ -n "$STUDENT" ] && models+=("$STUDENT")
echo "| model | text | setting | per-tensor | RPTQ |"
echo "|---|---|---|---|---|"
for model in "${models[@]}"; do
  case "$(basename "$model")" in
    random-*) texts=("$(own_samples "$model" 1)"); calib="$(own_samples "$model" 101)" ;;
    *) texts=("$WIKI" "$TINY"); calib=c4.txt ;;
  esac
  for text in "${texts[@]}"; do
    name=$(basename "$text" .txt)
    echo "| $(basename "$model") | $name | FP | $(fp "$model" "$text") | |"
    for setting in "${SETTINGS[@]}"; do
      read -r per_tensor rptq_ppl <<<"$(rptq "$model" "$setting" "$text" "$calib")"
      echo "| $(basename "$model") | $name | $setting | $per_tensor | $rptq_ppl |"
    done
  done
done
