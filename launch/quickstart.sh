#!/usr/bin/env bash
# Installs the dependencies, builds qforge and runs the pipeline end to end on 2 MPI ranks with nothing
# downloaded: a random LLaMA with a byte-level tokenizer stands in for the teacher; it writes a synthetic corpus
# (LLM-QAT stage 1), a W4-A8-KV4 student learns it by distillation (stage 2) and is exported and evaluated, and
# GPTQ quantizes the teacher's weights to 4 bits calibrated on that corpus (stage 3, data-free).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$root/launch/install-deps.sh"
cmake -S "$root" -B "$root/build" -DCMAKE_BUILD_TYPE=Release
cmake --build "$root/build" -j"$(nproc)"

out="$root/out/quickstart"
rm -rf "$out"
mkdir -p "$out"
qforge2() { "$root/launch/qforge-mpirun.sh" 2 "$@"; }
ppl() { qforge2 eval ppl --model "$1" --quant "$2" --text "$root/README.md" --seq-len 128 | sed -n 's/.*perplexity \([0-9.]*\)$/\1/p'; }

qforge2 env --config "$root/configs/default.yaml" --set output.dir="$out/env"
"$root/build/launch/qforge" init-model --out "$out/teacher" --seed 1
qforge2 generate --model "$out/teacher" --output "$out/corpus.h5" --num-samples 256 --seq-len 64
qforge2 qat --model "$out/teacher" --corpus "$out/corpus.h5" --output "$out/qat" --quant 4-8-4 --lr 1e-3 \
  --set train.global_batch=16 --set train.epochs=2
qforge2 ptq --model "$out/teacher" --output "$out/ptq" --calib-corpus "$out/corpus.h5" --wbits 4 --group-size 32 \
  --nsamples 64 --seq-len 32
rtn=$(ppl "$out/teacher" 4-8-4)
qat=$(ppl "$out/qat/student" 4-8-4)
fp=$(ppl "$out/teacher" 16-16-16)
gptq=$(ppl "$out/ptq" 16-16-16)
cat <<SUMMARY
quickstart: the pipeline ran end to end on a random teacher, so only the distillation loss above (teacher
entropy + KL to the student, first -> last step) says anything about quality; perplexity of README.md at
W4-A8-KV4: RTN $rtn, QAT $qat; full precision $fp, GPTQ W4 g32 weights (data-free) $gptq. The real-model
tables are in docs/training.md and docs/ptq.md.
outputs in $out (corpus.h5, qat/student, qat/packed, qat/checkpoints, qat/qat.json, ptq/ with ptq.json)
SUMMARY
