#!/usr/bin/env bash
# Runs qforge on N local MPI ranks: qforge-mpirun.sh N COMMAND [ARGS...]
# Allows more ranks than cores (--oversubscribe) and running as root (containers, CI).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ranks=$1
shift
if [ "$(id -u)" -eq 0 ]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi
exec mpirun -np "$ranks" --oversubscribe "${QFORGE:-$root/build/launch/qforge}" "$@"
