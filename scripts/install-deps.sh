#!/bin/sh
# install-deps.sh - installs every Debian 12 package that building and testing
# Velo needs, and nothing else.  Idempotent: packages already installed are
# left alone, and `apt-get update` runs only when something is missing.  Runs
# as root (CI) or through sudo otherwise.  Exit status 0 when everything is in
# place afterwards.
#
# Usage: scripts/install-deps.sh [--check]
#   --check  only report what is missing (exit 1 if anything is), install nothing
set -eu

# What each package is for:
#   build-essential cmake pkg-config           the C toolchain and the build
#   libgrpc-dev libprotobuf-c-dev              gRPC core C API, protobuf-c runtime
#   protobuf-compiler protobuf-c-compiler      protoc and protoc-c (C stubs)
#   protobuf-compiler-grpc                     grpc_python_plugin (Python stubs for the tests)
#   grpc-proto                                 grpc/health/v1/health.proto, reflection protos
#   libltdl-dev                                the plugin loader
#   libjson-c-dev                              config.json of the model repository
#   python3 python3-grpcio python3-protobuf    end-to-end tests (run by /usr/bin/python3)
#   python3-numpy python3-pytest
#   valgrind                                   memory checks by hand (not run by the suite)
#   gcc-aarch64-linux-gnu qemu-user            the CPU kernels' portable path cross-compiled for
#                                              arm64 and its unit tests run under qemu (tests/unit/
#                                              arm64.cmake): x86 SIMD must compile away elsewhere
#   hipcc libamdhip64-dev                      the HIP backend (ROCm 5.2; ~350 MB): CI builds it so
#                                              that a change breaking GPU code fails CI.  The CUDA
#                                              backend needs NVIDIA's toolkit (not a Debian package;
#                                              /usr/local/cuda is found when present).  Set
#                                              VELO_DEPS_NO_HIP=1 to skip hipcc.
PACKAGES="
build-essential
cmake
pkg-config
libgrpc-dev
libprotobuf-c-dev
protobuf-compiler
protobuf-c-compiler
protobuf-compiler-grpc
grpc-proto
libltdl-dev
libjson-c-dev
python3
python3-grpcio
python3-protobuf
python3-numpy
python3-pytest
valgrind
gcc-aarch64-linux-gnu
qemu-user
"
if [ "${VELO_DEPS_NO_HIP:-0}" != 1 ]; then
  PACKAGES="$PACKAGES hipcc libamdhip64-dev"
fi

# is_installed PKG: true when dpkg has PKG fully installed.
is_installed() {
  status=$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true)
  [ "$status" = "install ok installed" ]
}

missing=""
for p in $PACKAGES; do
  if ! is_installed "$p"; then
    missing="$missing $p"
  fi
done

if [ -z "$missing" ]; then
  echo "install-deps: all build and test packages are installed"
  exit 0
fi

echo "install-deps: missing:$missing"
if [ "${1:-}" = "--check" ]; then
  exit 1
fi

if [ "$(id -u)" -eq 0 ]; then
  SUDO=""
elif command -v sudo >/dev/null 2>&1; then
  SUDO="sudo"
else
  echo "install-deps: not root and no sudo; install as root:$missing" >&2
  exit 1
fi

# apt-get reads DEBIAN_FRONTEND from the environment; pass it through sudo too.
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update
# shellcheck disable=SC2086  # word splitting of the package list is intended
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $missing

still=""
for p in $missing; do
  if ! is_installed "$p"; then
    still="$still $p"
  fi
done
if [ -n "$still" ]; then
  echo "install-deps: still missing after apt-get install:$still" >&2
  exit 1
fi
echo "install-deps: installed:$missing"
