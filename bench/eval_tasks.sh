#!/usr/bin/env bash
# qforge eval tasks on stories260K as full precision, RTN 4-8-4, QAT 4-8-4, GPTQ W4 and RPTQ W4A4KV: every task
# from ../shared, perplexities, model size and scoring speed. Prints the Markdown table of docs/evaluation.md.
# usage: bench/eval_tasks.sh QFORGE SHARED_DIR WORK_DIR [RANKS] [LIMIT]   (LIMIT 0: every item)
set -euo pipefail
QFORGE=$1
SHARED=$2
WORK=$3
RANKS=${4:-2}
LIMIT=${5:-0}
MPI=(mpirun --oversubscribe -np "$RANKS")
TEXT="$SHARED/data/tinystories/tinystories_val.txt"
mkdir -p "$WORK"
cd "$WORK"

[ -f stories/config.json ] || "$QFORGE" convert llama2c --in "$SHARED/models/stories260K/stories260K.bin" \
  --tokenizer "$SHARED/models/stories260K/tok512.bin" --out stories
if [ ! -f qat-4-8-4/gptq/config.json ]; then
  [ -f corpus.h5 ] || "${MPI[@]}" "$QFORGE" generate --model stories --output corpus.h5 --seq-len 256 --seed 1
  "${MPI[@]}" "$QFORGE" qat --model stories --corpus corpus.h5 --output qat-4-8-4 --quant 4-8-4 >qat.log 2>&1
fi
[ -f gptq-w4/gptq/config.json ] || "${MPI[@]}" "$QFORGE" ptq --model stories --output gptq-w4 --calib "$TEXT" \
  --method gptq --wbits 4 >gptq.log 2>&1
[ -f rptq-w4a4kv/gptq/config.json ] || "${MPI[@]}" "$QFORGE" ptq --model stories --output rptq-w4a4kv --calib "$TEXT" \
  --method rptq --setting W4A4KV >rptq.log 2>&1

tasks=piqa,arc_easy,arc_challenge,openbookqa,winogrande,boolq,hellaswag,mmlu,triviaqa,wikitext2,c4
texts="wikitext2=$SHARED/data/wikitext-2/wiki.test.raw,c4=$SHARED/data/c4/c4_validation_2k.jsonl"
# The quantized models as stored in the GPTQ checkpoint format (their size on disk): QAT's export with its 8-bit
# activations and 4-bit KV cache simulated (its weights re-quantize onto their own grid), GPTQ's, and RPTQ's
# packed weights inside its checkpoint of reorders and static activation quantizers.
models=("fp:stories:16-16-16" "rtn-4-8-4:stories:4-8-4" "qat-4-8-4:qat-4-8-4/gptq:4-8-4" "gptq-w4:gptq-w4/gptq:16-16-16"
        "rptq-w4a4kv:rptq-w4a4kv/gptq:16-16-16")
for entry in "${models[@]}"; do
  IFS=: read -r name dir bits <<<"$entry"
  [ -f "eval-$name/results.json" ] || "${MPI[@]}" "$QFORGE" eval tasks --model "$dir" --quant "$bits" \
    --tasks "$tasks" --data-dir "$SHARED/tasks" --paths "$texts" --limit "$LIMIT" --batch-size 16 \
    --output "eval-$name" --set log.progress_interval_s=60 >"eval-$name.log" 2>&1
done

/usr/bin/python3 - "$RANKS" "${models[@]}" <<'EOF'
import json, sys
ranks, entries = sys.argv[1], sys.argv[2:]
names = [e.split(":")[0] for e in entries]
runs = {n: json.load(open("eval-%s/results.json" % n)) for n in names}
first = runs[names[0]]
print("| task | metric | items | " + " | ".join(names) + " |")
print("|---|---|---:|" + "---:|" * len(names))
for task, row in first["results"].items():
    if task.startswith("mmlu_"): continue
    items = first["n-samples"].get(task, {}).get("effective", first["results"][task].get("windows", ""))
    for key in row:
        if not key.endswith(",none") or "_stderr" in key or key.startswith("mean_nll"): continue
        cells = []
        for n in names:
            r = runs[n]["results"][task]
            err = r.get(key.replace(",none", "_stderr,none"))
            cells.append("%.4f" % r[key] + (" ± %.4f" % err if isinstance(err, float) else ""))
        print("| %s | %s | %s | %s |" % (task, key.split(",")[0], items, " | ".join(cells)))
print("| size | GB on disk | | " + " | ".join("%.6f" % runs[n]["model_size"]["gb"] for n in names) + " |")
print("| size | bits per parameter | | " +
      " | ".join("%.2f" % runs[n]["model_size"]["bits_per_parameter"] for n in names) + " |")
print()
print("Scoring speed on %s ranks (items/s; perplexities: windows/s):" % ranks)
print("| task | " + " | ".join(names) + " |")
print("|---|" + "---:|" * len(names))
for task, s in first["speed"].items():
    key = "items_per_second" if "items_per_second" in s else "windows_per_second"
    print("| %s | %s |" % (task, " | ".join("%.1f" % runs[n]["speed"][task][key] for n in names)))
EOF
