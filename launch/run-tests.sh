#!/usr/bin/env bash
# Installs the dependencies, builds qforge and runs every test (CTest: GoogleTest binaries as 1, 2 and 4 MPI
# ranks, the CLI checks, tests/fuzz's fuzz targets and sanitized suites). Usage: bash launch/run-tests.sh [extra
# ctest arguments]
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$root/launch/install-deps.sh"
cmake -S "$root" -B "$root/build" -DCMAKE_BUILD_TYPE=Release
cmake --build "$root/build" -j"$(nproc)"
# The fuzz targets and sanitized suites (tests/fuzz): a clang build of their own, whose tests the CTest run below
# includes (tests/CMakeLists.txt).
cmake -S "$root/tests/fuzz" -B "$root/build/fuzz" -DCMAKE_C_COMPILER=clang-14 -DCMAKE_CXX_COMPILER=clang++-14
cmake --build "$root/build/fuzz" -j"$(nproc)"
cd "$root/build"
ctest --output-on-failure "$@"
