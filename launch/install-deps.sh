#!/usr/bin/env bash
# Installs every Debian package qforge needs to build, test and run its quickstart.
# Idempotent: packages already present are left alone. Run as root (or with sudo available).
set -euo pipefail

PACKAGES=(
  build-essential cmake pkg-config git ca-certificates
  libtorch-dev                       # libtorch 1.13 (CPU)
  libopenblas0-pthread libopenblas-pthread-dev  # fast BLAS; the reference BLAS is ~20x slower
  libopenblas0-openmp                # the build qforge loads: one thread pool with libtorch (cmake/Dependencies.cmake)
  openmpi-bin libopenmpi-dev         # MPI runtime and headers
  libhdf5-openmpi-dev hdf5-tools     # parallel HDF5
  libyaml-cpp-dev                    # config files
  libgtest-dev                       # tests
  nlohmann-json3-dev libfmt-dev      # JSON (config.json, safetensors headers); formatting
  libpcre2-dev                       # regex: GPT-2's pre-tokenizer
  clang-14 libclang-rt-14-dev        # tests/fuzz: libFuzzer, AddressSanitizer, UndefinedBehaviorSanitizer
  python3-torch python3-h5py python3-numpy python3-sentencepiece  # independent references in tests (/usr/bin/python3)
  slurmctld slurmd slurm-client munge  # a single-node Slurm (launch/slurm/local-cluster.sh) for the cli_slurm test
  zlib1g-dev jargon-text            # qforge pretrain: gzip texts; the Jargon File (public domain), the default's text
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  echo "install-deps: all ${#PACKAGES[@]} packages already installed"
fi

# Debian registers OpenBLAS as an alternative for libblas.so.3; make sure it wins over the reference BLAS.
for alt in libblas.so.3-x86_64-linux-gnu liblapack.so.3-x86_64-linux-gnu; do
  path=$(update-alternatives --list "$alt" 2>/dev/null | grep openblas-pthread | head -n1 || true)
  if [ -n "$path" ]; then $SUDO update-alternatives --set "$alt" "$path" >/dev/null; fi
done
echo "install-deps: BLAS -> $(readlink -f /usr/lib/x86_64-linux-gnu/libblas.so.3 2>/dev/null || echo unknown)"
