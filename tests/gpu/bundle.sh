#!/usr/bin/env bash
# tests/gpu/bundle.sh - packs a CUDA build of Velo into a directory that
# tests/gpu/run.sh can use on a GPU machine that lacks Debian's build
# packages (gRPC, protobuf-c, json-c, libltdl): the programs, the plugins,
# the Python stubs, and every shared library they need except the C and
# C++ runtimes (glibc, libstdc++, libgcc_s), which the target machine has.
#
# Usage: tests/gpu/bundle.sh BUILD_DIR DEST
#   BUILD_DIR  a build configured with -DVELO_CUDA=ON (e.g. cmake -S . -B
#              build-gpu -DVELO_CUDA=ON -DVELO_HIP=OFF && cmake --build build-gpu)
#   DEST       created or refreshed: DEST/bin, DEST/lib/velo, DEST/python,
#              DEST/deps
# Then, on the GPU machine: VELO_GPU_PREBUILT=1 VELO_GPU_BUILD_DIR=DEST tests/gpu/run.sh
# (the models and references still come from VELO_SHARED_DIR or ../shared).
set -euo pipefail
[ $# = 2 ] || { echo "usage: $0 BUILD_DIR DEST" >&2; exit 2; }
B=$(cd "$1" && pwd)
mkdir -p "$2"
D=$(cd "$2" && pwd)
mkdir -p "$D/bin" "$D/lib/velo" "$D/deps"
for p in velod velo velo-bench velo-gpu-check; do cp "$B/bin/$p" "$D/bin/"; done
cp "$B"/lib/velo/libvelo-*.so "$D/lib/velo/"
rm -f "$D/lib/velo/libvelo-backend-hip.so" # needs ROCm on the target
rm -rf "$D/python" && cp -r "$B/python" "$D/python"
[ -e "$D/lib/velo/libvelo-backend-cuda.so" ] || { echo "$0: $B has no CUDA plugin" >&2; exit 1; }
for f in "$D"/bin/* "$D"/lib/velo/*.so; do
  ldd "$f" | awk '/=> \// {print $3}'
done | sort -u | while read -r lib; do
  case "$(basename "$lib")" in
    libc.so.*|libm.so.*|libdl.so.*|librt.so.*|libpthread.so.*|ld-linux*|libstdc++.so.*|libgcc_s.so.*) ;;
    *) cp -L "$lib" "$D/deps/" ;;
  esac
done
echo "bundle: $D ($(du -sh "$D" | cut -f1)); run: VELO_GPU_PREBUILT=1 VELO_GPU_BUILD_DIR=$D tests/gpu/run.sh"
