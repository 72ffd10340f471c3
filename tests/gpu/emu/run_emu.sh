#!/usr/bin/env bash
# tests/gpu/emu/run_emu.sh - runs every kernel of
# backends/gpu_common/gpu_kernels.cu on the CPU through the emulation of
# emu.h (no GPU, no CUDA toolkit), against the CPU backend:
# test_gpu_emu.cc, with 32-lane warps (CUDA) and 64-lane wavefronts (AMD
# CDNA), under AddressSanitizer and UBSan.
#
# Usage: tests/gpu/emu/run_emu.sh BUILD_DIR   (a configured and built Velo
#        build: its lib/libvelo_cpu_kernels.a and lib/libvelo_op_check.a)
# Needs g++ with C++20 (std::barrier) and python3.  About a minute on two
# cores.  Exit status 0 when both widths pass.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../../.." && pwd)
B=$(cd "${1:?usage: $0 BUILD_DIR}" && pwd)
T=$(mktemp -d /tmp/velo-gpu-emu.XXXXXX)
trap 'rm -rf "$T"' EXIT
# kernel<<<grid, block, shmem, stream>>>(args) -> emu::Launch(grid, block,
# shmem, stream).run(kernel, args)
python3 - "$ROOT/backends/gpu_common/gpu_kernels.cu" "$T/gpu_kernels_emu.cc" <<'EOF'
import re, sys
src = open(sys.argv[1]).read()
out, n = re.subn(r"(\b\w+(?:<[^<>;()]*>)?)<<<(.*?)>>>\(", r"emu::Launch(\2).run(\1, ", src, flags=re.S)
if n < 10:
    sys.exit("run_emu.sh: found only %d kernel launches in %s" % (n, sys.argv[1]))
open(sys.argv[2], "w").write(out)
EOF
INC=(-I"$ROOT/backends/gpu_common" -I"$ROOT/backends/cpu" -I"$ROOT/sdk/include" -I"$ROOT/tests/gpu/emu")
FLAGS=(-std=c++20 -O1 -g -fno-omit-frame-pointer -ffp-contract=off "-fsanitize=address,undefined" -pthread
       -Wall -Wno-unused-function -Wno-unused-variable -Wno-unknown-pragmas)
# both widths at once (one core each)
for w in 32 64; do
  {
    g++ "${FLAGS[@]}" -DEMU_WARP=$w "${INC[@]}" -include "$ROOT/tests/gpu/emu/emu.h" \
        "$T/gpu_kernels_emu.cc" "$ROOT/tests/gpu/emu/test_gpu_emu.cc" \
        "$B/lib/libvelo_cpu_kernels.a" "$B/lib/libvelo_op_check.a" -lm -o "$T/test_gpu_emu_$w" &&
      ASAN_OPTIONS=detect_stack_use_after_return=0 "$T/test_gpu_emu_$w"
    echo $? > "$T/rc_$w"
  } > "$T/out_$w.txt" 2>&1 &
done
wait
rc=0
for w in 32 64; do
  echo "== emulated warp width $w: exit $(cat "$T/rc_$w")"
  grep -v -e 'ASan doesn.t fully support' "$T/out_$w.txt"
  [ "$(cat "$T/rc_$w")" = 0 ] || rc=1
done
exit $rc
