#!/usr/bin/env bash
# tests/gpu/run.sh - the GPU check of the CUDA backend, for a machine with
# an NVIDIA GPU (H100/H200/H800 or any sm_80+ card), in one command and
# under 8 minutes (a time budget, VELO_GPU_BUDGET_S, default 470 s, caps
# every step; a step that no longer fits is reported as SKIP and the table
# still comes last):
#
#   0. checks what it needs before spending time: a GPU (nvidia-smi), and
#      for building, cmake >= 3.25, a C compiler, nvcc, make or ninja,
#      pkg-config with grpc, libprotobuf-c and json-c, protoc-c, protoc and
#      ltdl.h.  Whatever is missing is named, and the script stops (exit 2)
#      unless a prebuilt bundle is there (below).                     ~1 s
#   1. builds Velo with -DVELO_CUDA=ON (or uses a prebuilt bundle), and
#      meanwhile generates the TinyLlama-1.1B-shaped Q4_0 model of
#      ../shared/anchors/cpu-llm.md (random weights, llama-spm vocab).
#      16 cores: configure ~10 s, build ~60-120 s (nvcc compiles sm_80
#      and sm_90 in parallel); the model ~60-100 s, in parallel.
#   2. velo-gpu-check: every llama model of ../shared/models against
#      llama.cpp's references (greedy ids by ../shared/reference/README.md's
#      rule, first-step logits) and against the CPU backend, batch
#      invariance on the GPU, and a BF16 file (tests/gpu/make_bf16.py).
#                                                                 ~20-60 s
#   3. velod --backend cuda serving stories260K: `velo generate` of every
#      reference prompt (64 greedy tokens) gives llama.cpp's text exactly.
#                                                                  ~5-15 s
#   4. velo-bench on the TinyLlama-shaped model: prefill of 512 tokens and
#      single-stream decode of 128 (with CUDA graphs, and without), and the
#      HBM roofline fraction of decode (weights read per token / 4.8 TB/s,
#      VELO_GPU_HBM_TBS to change).                               ~20-60 s
#   5. aggregate decode at 16 and 64 concurrent sequences: velod (the
#      model with max_active 64) driven by sdk/tools/velo_bench_serve.py.
#                                                                 ~20-90 s
#   6. prints the table last.
# Exit status: 0 when every check passed (speed goals are reported, not
# enforced), 1 when a check failed or was skipped for time, 2 when it could
# not run (no GPU, a missing tool, the build failed).  Everything is written
# under a temporary directory (printed); the final table (table.md) and the
# logs and JSON reports (logs.tar.gz) are also copied to $VELO_GPU_OUT,
# default $OUT when that is set.
#
# A GPU machine without Debian's build packages (a CUDA/PyTorch image, say)
# runs a bundle made on a machine that has them:
#   tests/gpu/bundle.sh BUILD_DIR build/gpu-bundle   (BUILD_DIR configured
#       with -DVELO_CUDA=ON; the bundle holds the programs, the plugins, the
#       shared libraries they need, the Python stubs and the shared data the
#       check reads: about 50 MB)
# and then, on the GPU machine, plain tests/gpu/run.sh uses
# build/gpu-bundle when the build tools are missing (or always, with
# VELO_GPU_PREBUILT=1).
#
# Environment:
#   VELO_SHARED_DIR     models and references (default: shared/ in the
#                       checkout if present, else ../shared, else the
#                       bundle's shared/)
#   VELO_GPU_BUILD_DIR  build directory (default build-gpu in the checkout;
#                       with a bundle, the bundle: default build/gpu-bundle)
#   VELO_GPU_PREBUILT=1 use VELO_GPU_BUILD_DIR as a bundle of
#                       tests/gpu/bundle.sh (bin/, lib/velo/, python/,
#                       deps/, shared/); =0 never use a bundle
#   VELO_GPU_PYTHON     python with numpy (model generation) and grpcio
#                       (serving benchmark); default: the first of
#                       /usr/bin/python3 and python3 that has numpy
#   VELO_GPU_DEVICE     CUDA device index (default 0)
#   VELO_GPU_BACKEND    the backend under test (default cuda; "cpu" dry-runs
#                       the script itself on a machine without a GPU)
#   VELO_GPU_BENCH_MODEL  benchmark this GGUF file instead of generating the
#                       TinyLlama-shaped one
#   VELO_GPU_BUDGET_S   the time budget in seconds (default 470)
set -uo pipefail

T0=$(date +%s)
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
DEV=${VELO_GPU_DEVICE:-0}
BACKEND=${VELO_GPU_BACKEND:-cuda}
HBM_TBS=${VELO_GPU_HBM_TBS:-4.8}
BUDGET=${VELO_GPU_BUDGET_S:-470}
WORK=$(mktemp -d /tmp/velo-gpu.XXXXXX)
RESULTS=${VELO_GPU_OUT:-${OUT:-}}
JOBS=$(nproc 2>/dev/null || echo 4)
FAILED=0
VELO_LD=${LD_LIBRARY_PATH:-}
declare -a ROWS=()     # "check|result|detail"
declare -a BENCH=()    # "what|tokens/s|HBM fraction|goal"

GEN_PID=
VPID=
# never leave a model generator or a velod of ours behind
trap '[ -n "$GEN_PID" ] && kill "$GEN_PID" 2>/dev/null; [ -n "$VPID" ] && kill "$VPID" 2>/dev/null' EXIT
log() { printf '[%3ds] %s\n' $(( $(date +%s) - T0 )) "$*"; }
result() { ROWS+=("$1|$2|$3"); [ "$2" = PASS ] || FAILED=1; log "$1: $2 $3"; }
die() { echo "run.sh: $*" >&2; exit 2; }
# Seconds left of the budget.
left() { echo $(( BUDGET - ($(date +%s) - T0) )); }
# A step's timeout: its cap, or what is left of the budget less a margin
# for the table, whichever is smaller (at least 1).
tmo() { local l; l=$(( $(left) - 15 )); [ "$l" -lt "$1" ] || l=$1; [ "$l" -ge 1 ] || l=1; echo "$l"; }
# True when at least $1 seconds of the budget are left.
have() { [ "$(left)" -ge "$1" ]; }

log "velo GPU check: repository $ROOT, output $WORK, budget ${BUDGET} s"

# --- 0. what this machine has -------------------------------------------------
GPU_NAME=
if [ "$BACKEND" = cuda ]; then
  if ! command -v nvidia-smi >/dev/null 2>&1; then
    [ -e /proc/driver/nvidia/version ] || ls /dev/nvidia[0-9]* >/dev/null 2>&1 ||
      die "no NVIDIA GPU found: there is no nvidia-smi, no /proc/driver/nvidia and no /dev/nvidia0" \
          "(VELO_GPU_BACKEND=cpu dry-runs this script without a GPU)"
    log "nvidia-smi not found; the NVIDIA driver is present: continuing"
  elif ! nvidia-smi -L > "$WORK/gpus.txt" 2>&1 || ! grep -q '^GPU [0-9]' "$WORK/gpus.txt"; then
    die "no NVIDIA GPU found: nvidia-smi -L says: $(head -3 "$WORK/gpus.txt" | tr '\n' ' ')" \
        "(VELO_GPU_BACKEND=cpu dry-runs this script without a GPU)"
  else
    nvidia-smi -i "$DEV" --query-gpu=index,name,memory.total,driver_version --format=csv,noheader \
      > "$WORK/gpu.txt" 2>&1 || die "GPU $DEV: $(cat "$WORK/gpu.txt"); this machine has: $(cat "$WORK/gpus.txt")"
    cat "$WORK/gpu.txt"
    GPU_NAME=$(cut -d, -f2 "$WORK/gpu.txt" | sed 's/^ *//; q')
  fi
fi

# Tools and packages a build needs that this machine lacks (one line each).
missing_build_tools() {
  local c v
  if ! command -v cmake >/dev/null 2>&1; then echo "cmake (>= 3.25)"
  else
    v=$(cmake --version | sed -n '1s/[^0-9]*\([0-9][0-9]*\.[0-9][0-9]*\).*/\1/p')
    [ "$(printf '%s\n3.25\n' "$v" | sort -V | head -1)" = 3.25 ] || echo "cmake >= 3.25 (this one is $v)"
  fi
  command -v cc >/dev/null 2>&1 || command -v gcc >/dev/null 2>&1 || echo "a C compiler (cc)"
  command -v make >/dev/null 2>&1 || command -v ninja >/dev/null 2>&1 || echo "make or ninja"
  if [ "$BACKEND" = cuda ]; then
    command -v nvcc >/dev/null 2>&1 || [ -x /usr/local/cuda/bin/nvcc ] || [ -x "${CUDA_HOME:-/nonexistent}/bin/nvcc" ] ||
      echo "nvcc (the CUDA toolkit)"
  fi
  for c in protoc protoc-c; do command -v "$c" >/dev/null 2>&1 || echo "$c"; done
  if ! command -v pkg-config >/dev/null 2>&1; then echo "pkg-config (and grpc, libprotobuf-c, json-c)"
  else
    for v in grpc libprotobuf-c json-c; do pkg-config --exists "$v" 2>/dev/null || echo "pkg-config module $v"; done
  fi
  [ -e /usr/include/ltdl.h ] || [ -e /usr/local/include/ltdl.h ] || echo "ltdl.h (libltdl-dev)"
}

# --- shared data, build or bundle ---------------------------------------------
BUNDLE_DEFAULT=$ROOT/build/gpu-bundle
MISSING=$(missing_build_tools)
PREBUILT=${VELO_GPU_PREBUILT:-}
if [ -z "$PREBUILT" ]; then
  PREBUILT=0
  if [ -n "$MISSING" ] && [ -x "${VELO_GPU_BUILD_DIR:-$BUNDLE_DEFAULT}/bin/velod" ]; then
    PREBUILT=1
    log "this machine cannot build Velo (missing: $(echo "$MISSING" | paste -sd, -)): using the bundle"
  fi
fi
if [ "$PREBUILT" = 1 ]; then
  BUILD=${VELO_GPU_BUILD_DIR:-$BUNDLE_DEFAULT}
  [ -x "$BUILD/bin/velod" ] || die "VELO_GPU_PREBUILT=1 but $BUILD/bin/velod is missing: make the bundle with" \
                                  "tests/gpu/bundle.sh BUILD_DIR $BUILD on a machine with Debian's packages"
  BUILD=$(cd "$BUILD" && pwd)
elif [ -n "$MISSING" ]; then
  echo "run.sh: this machine cannot build Velo; it lacks:" >&2
  while IFS= read -r m; do echo "  - $m" >&2; done <<< "$MISSING"
  die "install those (Debian: scripts/install-deps.sh), or make a bundle where they are installed," \
      "tests/gpu/bundle.sh BUILD_DIR $BUNDLE_DEFAULT, and bring it along: run.sh then uses it"
else
  BUILD=${VELO_GPU_BUILD_DIR:-$ROOT/build-gpu}
fi
if [ -n "${VELO_SHARED_DIR:-}" ]; then SHARED=$VELO_SHARED_DIR
elif [ -d "$ROOT/shared/models" ]; then SHARED=$ROOT/shared
elif [ -d "$ROOT/../shared/models" ]; then SHARED=$ROOT/../shared
else SHARED=$BUILD/shared; fi
if ! SHARED=$(cd "$SHARED" 2>/dev/null && pwd) || [ ! -d "$SHARED/models" ]; then
  die "no shared data (models, references) at ${VELO_SHARED_DIR:-$ROOT/shared, $ROOT/../shared or $BUILD/shared}:" \
      "set VELO_SHARED_DIR, or make the bundle with tests/gpu/bundle.sh (it copies what the check reads)"
fi
log "shared data $SHARED"

# --- python ------------------------------------------------------------------
PY=${VELO_GPU_PYTHON:-}
if [ -z "$PY" ]; then
  for p in /usr/bin/python3 python3; do
    if command -v "$p" >/dev/null 2>&1 && "$p" -c 'import numpy' 2>/dev/null; then PY=$p; break; fi
  done
fi
[ -n "$PY" ] || log "no python with numpy: the TinyLlama model and the BF16 files cannot be generated"

# --- 1. build, and the benchmark model meanwhile ------------------------------
MODEL=${VELO_GPU_BENCH_MODEL:-$WORK/tinyllama-q4_0.gguf}
if [ -n "$PY" ] && [ ! -s "$MODEL" ]; then
  # timeout's own pid: killing it (the EXIT trap) ends the generator too
  timeout 300 "$PY" "$SHARED/tools/make_synth_gguf.py" synth \
    --vocab-from "$SHARED/vocab/ggml-vocab-llama-spm.gguf" --out "$MODEL.tmp" \
    --n-embd 2048 --n-layer 22 --n-head 32 --n-head-kv 4 --n-ff 5632 --ctx 2048 \
    --type Q4_0 --seed 0 > "$WORK/make_model.log" 2>&1 &
  GEN_PID=$!
fi
if [ "$PREBUILT" = 1 ]; then
  VELO_LD="$BUILD/deps${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  log "using the prebuilt bundle $BUILD"
else
  GEN=()
  if [ ! -e "$BUILD/CMakeCache.txt" ] && ! command -v make >/dev/null 2>&1; then GEN=(-G Ninja); fi
  NVCC=$(command -v nvcc || true)
  [ -n "$NVCC" ] || [ ! -x "${CUDA_HOME:-/nonexistent}/bin/nvcc" ] || NVCC=$CUDA_HOME/bin/nvcc
  [ -n "$NVCC" ] || [ ! -x /usr/local/cuda/bin/nvcc ] || NVCC=/usr/local/cuda/bin/nvcc
  CUDA_ARGS=()
  [ "$BACKEND" != cuda ] || CUDA_ARGS=(-DVELO_CUDA=ON -DCMAKE_CUDA_COMPILER="$NVCC")
  log "building with CUDA ($NVCC, $JOBS jobs) in $BUILD (log: $WORK/build.log)"
  if ! { timeout "$(tmo 120)" cmake "${GEN[@]}" -S "$ROOT" -B "$BUILD" "${CUDA_ARGS[@]}" -DVELO_HIP=OFF \
           -DCMAKE_BUILD_TYPE=Release -DVELO_SHARED_DIR="$SHARED" -DVELO_E2E_SHARED_DIR="$SHARED" &&
         timeout "$(tmo 300)" cmake --build "$BUILD" -j "$JOBS"; } > "$WORK/build.log" 2>&1; then
    tail -30 "$WORK/build.log"
    die "the build failed after $(( $(date +%s) - T0 )) s (full log: $WORK/build.log).  A GPU machine" \
        "without Debian's packages can run a bundle made elsewhere: see the top of tests/gpu/run.sh"
  fi
  log "build done"
fi
BIN=$BUILD/bin
PLUGINS=$BUILD/lib/velo
# Runs a Velo program (or timeout/env around one) with the bundle's
# libraries; only Velo's programs get them, never python (its ssl, zlib).
vx() { LD_LIBRARY_PATH="$VELO_LD" "$@"; }
for f in "$BIN/velod" "$BIN/velo" "$BIN/velo-bench" "$BIN/velo-gpu-check" "$PLUGINS/libvelo-backend-$BACKEND.so"; do
  [ -e "$f" ] || die "$f is missing"
done
vx "$BIN/velod" --list-plugins --plugin-dir "$PLUGINS" > "$WORK/plugins.txt" 2> "$WORK/plugins.log"
cat "$WORK/plugins.txt"
PROBE=$(grep -E "^$BACKEND +backend " "$WORK/plugins.txt" | sed -E 's/.*\.so +//')
case "$PROBE" in
  available*) ;;
  "") die "velod --list-plugins does not list the $BACKEND backend: $(tail -5 "$WORK/plugins.log")" ;;
  *) die "the $BACKEND backend cannot run here: $PROBE" ;;
esac
result "build" PASS "$BACKEND $PROBE"

# --- 2. model reference checks -----------------------------------------------
PAIR=()
if [ -n "$PY" ] && "$PY" "$ROOT/tests/gpu/make_bf16.py" "$SHARED" "$WORK" > "$WORK/make_bf16.log" 2>&1; then
  PAIR=(--pair "$WORK/synth-kq-BF16.gguf" "$WORK/synth-kq-BF16-F32.gguf")
else
  result "BF16 files" FAIL "make_bf16.py failed or no python with numpy (log: $WORK/make_bf16.log)"
fi
if have 60; then
  log "velo-gpu-check (log: $WORK/gpu_check.txt)"
  vx timeout "$(tmo 180)" "$BIN/velo-gpu-check" --shared "$SHARED" --plugin-dir "$PLUGINS" --backend "$BACKEND" \
    --device "$DEV" "${PAIR[@]}" > "$WORK/gpu_check.txt" 2> "$WORK/gpu_check.log"
  rc=$?
  cat "$WORK/gpu_check.txt"
  if [ $rc = 0 ]; then result "reference checks" PASS "$(grep -c 'PASS$' "$WORK/gpu_check.txt") models"
  else
    [ $rc = 124 ] && echo "velo-gpu-check timed out" >> "$WORK/gpu_check.txt"
    tail -5 "$WORK/gpu_check.log"
    result "reference checks" FAIL "exit $rc, $(grep -c 'FAIL$' "$WORK/gpu_check.txt") failed; see gpu_check.txt"
  fi
else
  result "reference checks" SKIP "out of time"
fi

# --- 3. the server path on the GPU -------------------------------------------
# Starts velod with the arguments given, logging to $1; sets VPID and PORT;
# true once it answers health within $2 seconds.
start_velod() {
  local logf=$1 wait_s=$2 i
  shift 2
  PORT=$(( 20000 + RANDOM % 20000 ))
  vx "$BIN/velod" --listen 127.0.0.1:$PORT --plugin-dir "$PLUGINS" "$@" > "$logf" 2>&1 &
  VPID=$!
  for ((i = 0; i < wait_s * 5; i++)); do
    vx "$BIN/velo" health --server 127.0.0.1:$PORT >/dev/null 2>&1 && return 0
    kill -0 $VPID 2>/dev/null || return 1
    sleep 0.2
  done
  return 1
}
stop_velod() { [ -z "$VPID" ] || { kill "$VPID" 2>/dev/null; wait "$VPID" 2>/dev/null; }; VPID=; }

if [ -z "$PY" ]; then
  result "velod on $BACKEND: greedy text" FAIL "needs a python (prompts come from a JSON file)"
elif ! have 40; then
  result "velod on $BACKEND: greedy text" SKIP "out of time"
elif ! start_velod "$WORK/velod_ref.log" 30 --backend "$BACKEND:$DEV" \
       --model stories260K="$SHARED/models/stories260K.gguf"; then
  tail -5 "$WORK/velod_ref.log"
  result "velod on $BACKEND: greedy text" FAIL "velod did not start (see velod_ref.log)"
  stop_velod
else
  gen_ok=0 gen_total=0
  # one file per prompt (its exact text) and per wanted continuation
  # (unicode_escape'd, as the output is compared)
  "$PY" -c '
import json, sys
for p in json.load(open(sys.argv[1]))["prompts"]:
    open("%s/prompt_%d.txt" % (sys.argv[2], p["index"]), "w", encoding="utf-8").write(p["prompt"])
    open("%s/want_%d.txt" % (sys.argv[2], p["index"]), "w").write(
        p["f32"]["gen_text"].rstrip("\n").encode("unicode_escape").decode())' \
    "$SHARED/reference/stories260K.json" "$WORK"
  gen_ok=0 gen_total=0
  for pf in "$WORK"/prompt_*.txt; do
    [ -e "$pf" ] || continue
    idx=${pf##*prompt_}; idx=${idx%.txt}
    prompt=$(cat "$pf"; printf x); prompt=${prompt%x}
    want=$(cat "$WORK/want_$idx.txt")
    gen_total=$((gen_total + 1))
    got=$(vx timeout "$(tmo 60)" "$BIN/velo" generate "$prompt" --model stories260K --max-tokens 64 --temperature 0 \
          --ignore-eos --server 127.0.0.1:$PORT 2>>"$WORK/generate.log" | "$PY" -c \
          'import sys; print(sys.stdin.buffer.read().decode("utf-8").rstrip("\n").encode("unicode_escape").decode())')
    if [ "$got" = "$want" ]; then gen_ok=$((gen_ok + 1))
    else printf 'prompt %s: got  %s\n          want %s\n' "$idx" "$got" "$want" >> "$WORK/generate.log"; fi
  done
  if ! grep -q "backend $BACKEND:$DEV" "$WORK/velod_ref.log"; then
    gen_ok=-1
    echo "velod did not say it used backend $BACKEND:$DEV" >> "$WORK/generate.log"
  fi
  stop_velod
  if [ "$gen_total" -gt 0 ] && [ "$gen_ok" = "$gen_total" ]; then
    result "velod on $BACKEND: greedy text" PASS "$gen_ok/$gen_total prompts equal llama.cpp's text"
  else
    result "velod on $BACKEND: greedy text" FAIL "$gen_ok/$gen_total (see generate.log, velod_ref.log)"
  fi
fi

# --- 4. velo-bench on the TinyLlama-shaped Q4_0 model ------------------------
if [ -n "$GEN_PID" ]; then
  log "waiting for the TinyLlama-shaped model"
  while kill -0 "$GEN_PID" 2>/dev/null && have 75; do sleep 1; done
  kill -0 "$GEN_PID" 2>/dev/null && { kill "$GEN_PID"; echo "stopped: out of time" >> "$WORK/make_model.log"; }
  if wait "$GEN_PID"; then mv "$MODEL.tmp" "$MODEL"; else echo "exit $?" >> "$WORK/make_model.log"; fi
  GEN_PID=
  log "model: $(stat -c %s "$MODEL" 2>/dev/null || echo none) bytes"
fi
BPT=0
# The median tokens/s of test $2 ("pp512", "tg128") in velo-bench's JSON $1.
tps() {
  "$PY" -c '
import json, sys
d = json.load(open(sys.argv[1]))
print({x["test"]: x["median_tps"] for x in d["tests"]}.get(sys.argv[2], 0))' "$1" "$2"
}
frac() { "$PY" -c "print('%.2f' % ($1 * $2 / ($HBM_TBS * 1e12)))"; }
if [ ! -s "$MODEL" ]; then
  result "velo-bench" FAIL "no model (see make_model.log)"
elif ! have 45; then
  result "velo-bench" SKIP "out of time"
else
  log "velo-bench (log: $WORK/bench.log)"
  if vx timeout "$(tmo 150)" "$BIN/velo-bench" -m "$MODEL" -p 512 -n 128 -r 3 --backend "$BACKEND" --device "$DEV" \
       --plugin-dir "$PLUGINS" --bw-mib 64 --bw-passes 1 --json "$WORK/bench.json" > "$WORK/bench.log" 2>&1; then
    cat "$WORK/bench.log"
    PP=$(tps "$WORK/bench.json" pp512)
    TG=$(tps "$WORK/bench.json" tg128)
    BPT=$("$PY" -c 'import json, sys; print(json.load(open(sys.argv[1]))["model"]["bytes_per_token"])' "$WORK/bench.json")
    BENCH+=("decode, 1 stream (tg128)|$TG|$(frac "$TG" "$BPT")|>= 1000")
    BENCH+=("prefill 512 tokens (pp512)|$PP|-|>= 20000")
    result "velo-bench" PASS "$(printf 'pp512 %.0f t/s, tg128 %.0f t/s' "$PP" "$TG")"
    if [ "$BACKEND" = cuda ] && have 40 &&
       vx env VELO_CUDA_GRAPHS=0 timeout "$(tmo 90)" "$BIN/velo-bench" -m "$MODEL" -p 0 -n 128 -r 3 --backend "$BACKEND" \
         --device "$DEV" --plugin-dir "$PLUGINS" --bw-mib 64 --bw-passes 1 --json "$WORK/bench_nographs.json" \
         >> "$WORK/bench.log" 2>&1; then
      TG0=$(tps "$WORK/bench_nographs.json" tg128)
      BENCH+=("decode, 1 stream, no CUDA graphs|$TG0|$(frac "$TG0" "$BPT")|-")
    fi
  else
    tail -20 "$WORK/bench.log"
    result "velo-bench" FAIL "see bench.log"
  fi
fi

# --- 5. aggregate decode through velod ---------------------------------------
if [ ! -s "$MODEL" ] || [ -z "$PY" ] || ! "$PY" -c 'import grpc' 2>/dev/null; then
  result "serve bench" FAIL "needs the model and a python with grpcio (${PY:-none})"
elif ! VELO_PYTHON_DIR=$BUILD/python "$PY" -c '
import os, sys
sys.path.insert(0, os.environ["VELO_PYTHON_DIR"])
from velo.v1 import velo_pb2, velo_pb2_grpc' > "$WORK/stubs.log" 2>&1; then
  result "serve bench" FAIL "the generated stubs in $BUILD/python do not import with $PY: $(tail -1 "$WORK/stubs.log")"
elif ! have 60; then
  result "serve bench" SKIP "out of time"
else
  REPO=$WORK/repo
  mkdir -p "$REPO/tinyllama"
  ln -sf "$MODEL" "$REPO/tinyllama/model.gguf"
  cat > "$REPO/tinyllama/config.json" <<EOF
{"file": "model.gguf", "backend": "$BACKEND:$DEV", "kv_cache_size": "${VELO_GPU_KV:-4GiB}",
 "parameters": {"max_active": 64, "max_queue_size": 1024}}
EOF
  if ! start_velod "$WORK/velod_serve.log" 60 --model-repository "$REPO"; then
    tail -5 "$WORK/velod_serve.log"
    result "serve bench" FAIL "velod did not start (see velod_serve.log)"
  else
    for c in 16 64; do
      if ! have 30; then result "serve bench, $c streams" SKIP "out of time"; continue; fi
      if VELO_PYTHON_DIR=$BUILD/python timeout "$(tmo 120)" "$PY" "$ROOT/sdk/tools/velo_bench_serve.py" \
           --server 127.0.0.1:$PORT --model tinyllama --concurrency $c --requests $((2 * c)) \
           --max-tokens 128 --duration-s "$(( $(tmo 75) > 20 ? $(tmo 75) - 15 : 5 ))" --json "$WORK/serve_$c.json" \
           > "$WORK/serve_$c.log" 2>&1; then
        TPS=$("$PY" -c '
import json, sys
print(json.load(open(sys.argv[1]))["load"]["tokens_per_s"] or 0)' "$WORK/serve_$c.json")
        goal="-"; [ $c = 64 ] && goal=">= 15000"
        BENCH+=("decode, $c concurrent streams (velod)|$TPS|$("$PY" -c "print('%.2f' % ($TPS / $c * $BPT / ($HBM_TBS * 1e12)))")|$goal")
        result "serve bench, $c streams" PASS "$(printf '%.0f tokens/s' "$TPS")"
      else
        tail -5 "$WORK/serve_$c.log"
        result "serve bench, $c streams" FAIL "see serve_$c.log"
      fi
    done
  fi
  stop_velod
fi

# --- 6. the table ------------------------------------------------------------
ELAPSED=$(( $(date +%s) - T0 ))
table() {
echo "Velo GPU check, $(date -u +%Y-%m-%d), ${GPU_NAME:-no GPU} ($BACKEND:$DEV), ${ELAPSED} s; output in $WORK"
echo
echo "| check | result | detail |"
echo "| --- | --- | --- |"
for r in "${ROWS[@]}"; do IFS='|' read -r a b c <<< "$r"; echo "| $a | $b | $c |"; done
echo
echo "$(basename "$MODEL") ($(( BPT / 1000000 )) MB of weights read per token), HBM fraction at $HBM_TBS TB/s:"
echo
echo "| benchmark | tokens/s | HBM roofline fraction | goal |"
echo "| --- | --- | --- | --- |"
for r in "${BENCH[@]}"; do
  IFS='|' read -r a b c d <<< "$r"
  printf '| %s | %.0f | %s | %s |\n' "$a" "$b" "$c" "$d"
done
[ "$ELAPSED" -gt 480 ] && echo "warning: the check took ${ELAPSED} s, more than its 8-minute budget"
}
table > "$WORK/table.md"
if [ -n "$RESULTS" ]; then
  mkdir -p "$RESULTS"
  cp "$WORK/table.md" "$RESULTS/table.md"
  tar -C "$WORK" -czf "$RESULTS/logs.tar.gz" --exclude='*.gguf' --exclude='*.tmp' . 2>/dev/null
fi
echo
cat "$WORK/table.md"
exit $FAILED
