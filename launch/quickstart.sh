#!/usr/bin/env bash
# The main job end to end with nothing downloaded: installs the dependencies, builds qforge, pretrains a small
# LLaMA teacher (1.87M parameters, byte-level) on the Jargon File that Debian's jargon-text ships (cached: a rerun
# finds it done), then runs the pipeline on it on 2 MPI ranks (a synthetic corpus from the teacher, QAT by
# distillation, GPTQ calibrated on that corpus, evaluation on the held-out part of the text) and prints the report:
# full precision, RTN, QAT and GPTQ at 2-8-8 and 4-4-4 (launch/quickstart.yaml). About 5 minutes on 2 quiet cores
# after the build (pretraining 2-4, the pipeline 2.5); a rerun skips everything already done.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$root/launch/install-deps.sh"
cmake -S "$root" -B "$root/build" -DCMAKE_BUILD_TYPE=Release
cmake --build "$root/build" -j"$(nproc)"

out="$root/out/quickstart"
text=/usr/share/doc/jargon-text/jargon.txt.gz
mkdir -p "$out"
qforge2() { "$root/launch/qforge-mpirun.sh" 2 "$@"; }

qforge2 env --set output.dir="$out/env"
qforge2 pretrain --text "$text" --output "$out/jargon-teacher"
qforge2 pipeline --config "$root/launch/quickstart.yaml" --set model.path="$out/jargon-teacher" \
  --set output.dir="$out/pipeline" --set eval.text="$out/jargon-teacher/heldout.txt"
cat <<SUMMARY
quickstart: the teacher above was pretrained here (held-out perplexity per byte, against 259 for a uniform guess
over its byte vocabulary); the report compares full precision, round-to-nearest, QAT and GPTQ on the held-out text.
outputs in $out: jargon-teacher/ (checkpoint, heldout.txt, pretrain.json), pipeline/ (corpus.h5, qat/, ptq/, eval/,
report.md, report.json, plots/*.svg)
SUMMARY
