#!/usr/bin/env bash
# Installs the dependencies, builds qforge and runs the main job on defaults that need nothing downloaded.
# Until the pipeline stages exist the job is `qforge env` on 2 MPI ranks.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$root/launch/install-deps.sh"
cmake -S "$root" -B "$root/build" -DCMAKE_BUILD_TYPE=Release
cmake --build "$root/build" -j"$(nproc)"
"$root/launch/qforge-mpirun.sh" 2 env --config "$root/configs/default.yaml" --set output.dir="$root/out/quickstart"
echo "quickstart: outputs in $root/out/quickstart"
