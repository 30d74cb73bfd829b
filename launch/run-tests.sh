#!/usr/bin/env bash
# Installs the dependencies, builds qforge and runs every test (CTest: GoogleTest binaries as 1, 2 and 4 MPI
# ranks, and the CLI checks). Usage: bash launch/run-tests.sh [extra ctest arguments]
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$root/launch/install-deps.sh"
cmake -S "$root" -B "$root/build" -DCMAKE_BUILD_TYPE=Release
cmake --build "$root/build" -j"$(nproc)"
cd "$root/build"
ctest --output-on-failure "$@"
