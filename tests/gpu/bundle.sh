#!/usr/bin/env bash
# tests/gpu/bundle.sh - packs a CUDA build of Velo into a directory that
# tests/gpu/run.sh can use on a GPU machine that lacks Debian's build
# packages (gRPC, protobuf-c, json-c, libltdl): the programs and plugins
# (stripped), the Python stubs, every shared library they need except the C
# and C++ runtimes (glibc, libstdc++, libgcc_s), which the target machine
# has (the same or a newer glibc than the machine that built it), and the
# shared data run.sh reads (the models, references, vocabulary and tools it
# names: about 24 MB).  The whole bundle is about 50 MB.
#
# Usage: tests/gpu/bundle.sh BUILD_DIR [DEST]
#   BUILD_DIR  a build configured with -DVELO_CUDA=ON (e.g. cmake -S . -B
#              build-gpu -DVELO_CUDA=ON -DVELO_HIP=OFF && cmake --build build-gpu)
#   DEST       created or refreshed (default build/gpu-bundle in the
#              checkout, where run.sh looks): DEST/bin, DEST/lib/velo,
#              DEST/python, DEST/deps, DEST/shared
#   VELO_SHARED_DIR  the shared data to copy (default ../shared)
# Then, on the GPU machine: tests/gpu/run.sh (it uses build/gpu-bundle when
# it cannot build; VELO_GPU_PREBUILT=1 VELO_GPU_BUILD_DIR=DEST for another
# place).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
[ $# = 1 ] || [ $# = 2 ] || { echo "usage: $0 BUILD_DIR [DEST]" >&2; exit 2; }
B=$(cd "$1" && pwd)
DEST=${2:-$ROOT/build/gpu-bundle}
SH=$(cd "${VELO_SHARED_DIR:-$ROOT/../shared}" && pwd)
mkdir -p "$DEST"
D=$(cd "$DEST" && pwd)
rm -rf "${D:?}/bin" "${D:?}/lib" "${D:?}/deps" "${D:?}/python" "${D:?}/shared"
mkdir -p "$D/bin" "$D/lib/velo" "$D/deps"
for p in velod velo velo-bench velo-gpu-check; do cp "$B/bin/$p" "$D/bin/"; done
cp "$B"/lib/velo/libvelo-*.so "$D/lib/velo/"
rm -f "$D/lib/velo/libvelo-backend-hip.so" # needs ROCm on the target
[ -e "$D/lib/velo/libvelo-backend-cuda.so" ] || { echo "$0: $B has no CUDA plugin" >&2; exit 1; }
[ -d "$B/python/velo" ] || { echo "$0: $B has no Python stubs (grpc_python_plugin missing?)" >&2; exit 1; }
cp -r "$B/python" "$D/python"
for f in "$D"/bin/* "$D"/lib/velo/*.so; do
  if ldd "$f" | grep -q 'not found'; then
    echo "$0: $f has unresolved libraries:" >&2
    ldd "$f" | grep 'not found' >&2
    exit 1
  fi
  ldd "$f" | awk '/=> \// {print $3}'
done | sort -u | while read -r lib; do
  case "$(basename "$lib")" in
    libc.so.*|libm.so.*|libdl.so.*|librt.so.*|libpthread.so.*|ld-linux*|libstdc++.so.*|libgcc_s.so.*) ;;
    *) cp -L "$lib" "$D/deps/" ;;
  esac
done
strip --strip-debug "$D"/bin/* "$D"/lib/velo/*.so "$D"/deps/* 2>/dev/null || true
# the shared data of run.sh and velo-gpu-check
mkdir -p "$D/shared/models" "$D/shared/reference" "$D/shared/tools" "$D/shared/vocab"
cp "$SH"/models/stories260K.gguf "$SH"/models/stories260K-q8_0.gguf "$SH"/models/synth-kq-*.gguf "$D/shared/models/"
cp "$SH"/reference/stories260K.json "$SH"/reference/synth-kquants.json "$D/shared/reference/"
cp "$SH"/tools/make_synth_gguf.py "$D/shared/tools/"
cp "$SH"/vocab/ggml-vocab-llama-spm.gguf "$D/shared/vocab/"
SIZE=$(du -sm "$D" | cut -f1)
echo "bundle: $D (${SIZE} MB); on the GPU machine: tests/gpu/run.sh" \
     "(or VELO_GPU_PREBUILT=1 VELO_GPU_BUILD_DIR=$D tests/gpu/run.sh)"
[ "$SIZE" -lt 60 ] || echo "bundle.sh: warning: ${SIZE} MB; a device machine of this workplace takes 64 MiB of working tree in all" >&2
