#!/usr/bin/env bash
# tests/gpu/run.sh - the GPU check of the CUDA backend, for a machine with
# an NVIDIA GPU (H100/H200/H800 or any sm_80+ card), in one command and
# under 8 minutes:
#
#   1. builds Velo with -DVELO_CUDA=ON (or uses a prebuilt bundle, below),
#      and meanwhile generates the TinyLlama-1.1B-shaped Q4_0 model of
#      ../shared/anchors/cpu-llm.md (random weights, llama-spm vocab);
#   2. velo-gpu-check: every llama model of ../shared/models against
#      llama.cpp's references (greedy ids by ../shared/reference/README.md's
#      rule, first-step logits) and against the CPU backend, batch
#      invariance on the GPU, and a BF16 file (tests/gpu/make_bf16.py);
#   3. velod --backend cuda serving stories260K: `velo generate` of every
#      reference prompt (64 greedy tokens) gives llama.cpp's text exactly;
#   4. velo-bench on the TinyLlama-shaped model: prefill of 512 tokens and
#      single-stream decode of 128 (with CUDA graphs, and without), and the
#      HBM roofline fraction of decode (weights read per token / 4.8 TB/s,
#      VELO_GPU_HBM_TBS to change);
#   5. aggregate decode at 16 and 64 concurrent sequences: velod (the
#      model with max_active 64) driven by sdk/tools/velo_bench_serve.py;
#   6. prints the table last.
# Exit status: 0 when every check passed (speed goals are reported, not
# enforced), 1 when a check failed, 2 when it could not run (no GPU, build
# failed).  Everything is written under a temporary directory (printed);
# the final table (table.md) and the logs and JSON reports (logs.tar.gz)
# are also copied to $VELO_GPU_OUT, default $OUT when that is set.
#
# Environment:
#   VELO_SHARED_DIR     models and references (default: shared/ in the
#                       checkout if present, else ../shared)
#   VELO_GPU_BUILD_DIR  build directory (default build-gpu in the checkout)
#   VELO_GPU_PREBUILT=1 use VELO_GPU_BUILD_DIR as is: a directory made by
#                       tests/gpu/bundle.sh on a machine with Debian's
#                       packages (bin/, lib/velo/, python/, deps/), for a GPU
#                       machine that lacks gRPC, protobuf-c, json-c or ltdl
#   VELO_GPU_PYTHON     python with numpy (model generation) and grpcio
#                       (serving benchmark); default: the first of
#                       /usr/bin/python3 and python3 that has numpy
#   VELO_GPU_DEVICE     CUDA device index (default 0)
#   VELO_GPU_BACKEND    the backend under test (default cuda; "cpu" dry-runs
#                       the script itself on a machine without a GPU)
#   VELO_GPU_BENCH_MODEL  benchmark this GGUF file instead of generating the
#                       TinyLlama-shaped one
set -uo pipefail

T0=$(date +%s)
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
if [ -n "${VELO_SHARED_DIR:-}" ]; then SHARED=$VELO_SHARED_DIR
elif [ -d "$ROOT/shared/models" ]; then SHARED=$ROOT/shared
else SHARED=$ROOT/../shared; fi
SHARED=$(cd "$SHARED" 2>/dev/null && pwd) || { echo "run.sh: no shared data at $SHARED" >&2; exit 2; }
BUILD=${VELO_GPU_BUILD_DIR:-$ROOT/build-gpu}
DEV=${VELO_GPU_DEVICE:-0}
BACKEND=${VELO_GPU_BACKEND:-cuda}
HBM_TBS=${VELO_GPU_HBM_TBS:-4.8}
WORK=$(mktemp -d /tmp/velo-gpu.XXXXXX)
RESULTS=${VELO_GPU_OUT:-${OUT:-}}
JOBS=$(nproc 2>/dev/null || echo 4)
FAILED=0
declare -a ROWS=()     # "check|result|detail"
declare -a BENCH=()    # "what|tokens/s|HBM fraction|goal"

GEN_PID=
VPID=
# never leave a model generator or a velod of ours behind
trap '[ -n "$GEN_PID" ] && kill "$GEN_PID" 2>/dev/null; [ -n "$VPID" ] && kill "$VPID" 2>/dev/null' EXIT
log() { printf '[%3ds] %s\n' $(( $(date +%s) - T0 )) "$*"; }
result() { ROWS+=("$1|$2|$3"); [ "$2" = FAIL ] && FAILED=1; log "$1: $2 $3"; }

log "velo GPU check: repository $ROOT, shared data $SHARED, output $WORK"
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader 2>&1 | tee "$WORK/gpu.txt"
else
  echo "nvidia-smi not found" | tee "$WORK/gpu.txt"
fi
GPU_NAME=$(sed -n "$((DEV + 1))p" "$WORK/gpu.txt" | cut -d, -f2 | sed 's/^ *//')

# --- python ------------------------------------------------------------------
PY=${VELO_GPU_PYTHON:-}
if [ -z "$PY" ]; then
  for p in /usr/bin/python3 python3; do
    if command -v "$p" >/dev/null 2>&1 && "$p" -c 'import numpy' 2>/dev/null; then PY=$p; break; fi
  done
fi
[ -n "$PY" ] || log "no python with numpy: the TinyLlama model cannot be generated"

# --- 1. build, and the benchmark model meanwhile ------------------------------
MODEL=${VELO_GPU_BENCH_MODEL:-$WORK/tinyllama-q4_0.gguf}
if [ -n "$PY" ] && [ ! -s "$MODEL" ]; then
  ( timeout 300 "$PY" "$SHARED/tools/make_synth_gguf.py" synth \
      --vocab-from "$SHARED/vocab/ggml-vocab-llama-spm.gguf" --out "$MODEL.tmp" \
      --n-embd 2048 --n-layer 22 --n-head 32 --n-head-kv 4 --n-ff 5632 --ctx 2048 \
      --type Q4_0 --seed 0 > "$WORK/make_model.log" 2>&1 && mv "$MODEL.tmp" "$MODEL" ) &
  GEN_PID=$!
fi
if [ "${VELO_GPU_PREBUILT:-0}" = 1 ]; then
  export LD_LIBRARY_PATH="$BUILD/deps${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  log "using the prebuilt bundle $BUILD"
else
  log "building with CUDA in $BUILD (log: $WORK/build.log)"
  if ! { timeout 240 cmake -S "$ROOT" -B "$BUILD" -DVELO_CUDA=ON -DVELO_HIP=OFF \
           -DCMAKE_BUILD_TYPE=Release -DVELO_SHARED_DIR="$SHARED" -DVELO_E2E_SHARED_DIR="$SHARED" &&
         timeout 300 cmake --build "$BUILD" -j "$JOBS"; } > "$WORK/build.log" 2>&1; then
    tail -30 "$WORK/build.log"
    echo "run.sh: the build failed (full log: $WORK/build.log).  A GPU machine without Debian's" \
         "packages can run a bundle made elsewhere: tests/gpu/bundle.sh, then VELO_GPU_PREBUILT=1." >&2
    exit 2
  fi
fi
BIN=$BUILD/bin
PLUGINS=$BUILD/lib/velo
for f in "$BIN/velod" "$BIN/velo" "$BIN/velo-bench" "$BIN/velo-gpu-check" "$PLUGINS/libvelo-backend-cuda.so"; do
  [ -e "$f" ] || { echo "run.sh: $f is missing" >&2; exit 2; }
done
"$BIN/velod" --list-plugins --plugin-dir "$PLUGINS" 2>/dev/null | tee "$WORK/plugins.txt"
if ! grep -E "^$BACKEND +backend" "$WORK/plugins.txt" | grep -q ' available'; then
  echo "run.sh: the $BACKEND backend cannot run here: $(grep -E "^$BACKEND " "$WORK/plugins.txt")" >&2
  exit 2
fi
result "build" PASS "$BACKEND $(grep -E "^$BACKEND " "$WORK/plugins.txt" | sed 's/.* available/available/')"

# --- 2. model reference checks -----------------------------------------------
PAIR=()
if [ -n "$PY" ] && "$PY" "$ROOT/tests/gpu/make_bf16.py" "$SHARED" "$WORK" > "$WORK/make_bf16.log" 2>&1; then
  PAIR=(--pair "$WORK/synth-kq-BF16.gguf" "$WORK/synth-kq-BF16-F32.gguf")
else
  result "BF16 files" FAIL "make_bf16.py failed (log: $WORK/make_bf16.log)"
fi
log "velo-gpu-check (log: $WORK/gpu_check.txt)"
timeout 180 "$BIN/velo-gpu-check" --shared "$SHARED" --plugin-dir "$PLUGINS" --backend "$BACKEND" \
  --device "$DEV" "${PAIR[@]}" > "$WORK/gpu_check.txt" 2> "$WORK/gpu_check.log"
rc=$?
cat "$WORK/gpu_check.txt"
if [ $rc = 0 ]; then result "reference checks" PASS "$(grep -c PASS "$WORK/gpu_check.txt") models"
else result "reference checks" FAIL "exit $rc; see $WORK/gpu_check.txt"; fi

# --- 3. the server path on the GPU -------------------------------------------
PORT=$(( 20000 + RANDOM % 20000 ))
"$BIN/velod" --listen 127.0.0.1:$PORT --plugin-dir "$PLUGINS" --backend "$BACKEND:$DEV" \
  --model stories260K="$SHARED/models/stories260K.gguf" > "$WORK/velod_ref.log" 2>&1 &
VPID=$!
for _ in $(seq 100); do
  "$BIN/velo" health --server 127.0.0.1:$PORT >/dev/null 2>&1 && break
  kill -0 $VPID 2>/dev/null || break
  sleep 0.2
done
gen_ok=0 gen_total=0
if [ -n "$PY" ]; then
  while IFS=$'\x1f' read -r idx prompt want; do
    gen_total=$((gen_total + 1))
    got=$(timeout 60 "$BIN/velo" generate "$prompt" --model stories260K --max-tokens 64 --temperature 0 \
          --ignore-eos --server 127.0.0.1:$PORT 2>>"$WORK/generate.log" | "$PY" -c \
          'import sys; print(sys.stdin.buffer.read().decode("utf-8").rstrip("\n").encode("unicode_escape").decode())')
    if [ "$got" = "$want" ]; then gen_ok=$((gen_ok + 1))
    else printf 'prompt %s: got %s\n      want %s\n' "$idx" "$got" "$want" >> "$WORK/generate.log"; fi
  done < <("$PY" -c '
import json, sys
d = json.load(open(sys.argv[1]))
for p in d["prompts"]:
    esc = lambda s: s.encode("unicode_escape").decode()
    print("%d\x1f%s\x1f%s" % (p["index"], p["prompt"], esc(p["f32"]["gen_text"].rstrip("\n"))))' \
      "$SHARED/reference/stories260K.json")
fi
grep -q "backend $BACKEND:$DEV" "$WORK/velod_ref.log" || { gen_ok=-1; echo "velod did not use $BACKEND:$DEV" >> "$WORK/generate.log"; }
kill $VPID 2>/dev/null; wait $VPID 2>/dev/null; VPID=
if [ "$gen_total" -gt 0 ] && [ "$gen_ok" = "$gen_total" ]; then
  result "velod on $BACKEND: greedy text" PASS "$gen_ok/$gen_total prompts equal llama.cpp's text"
else
  result "velod on $BACKEND: greedy text" FAIL "$gen_ok/$gen_total (see $WORK/generate.log, $WORK/velod_ref.log)"
fi

# --- 4. velo-bench on the TinyLlama-shaped Q4_0 model ------------------------
if [ -n "$GEN_PID" ]; then
  log "waiting for the TinyLlama-shaped model"
  wait "$GEN_PID"
  GEN_PID=
fi
BPT=0
if [ -s "$MODEL" ]; then
  log "velo-bench (log: $WORK/bench.log)"
  if timeout 150 "$BIN/velo-bench" -m "$MODEL" -p 512 -n 128 -r 3 --backend "$BACKEND" --device "$DEV" \
       --plugin-dir "$PLUGINS" --bw-mib 64 --bw-passes 1 --json "$WORK/bench.json" > "$WORK/bench.log" 2>&1 &&
     VELO_CUDA_GRAPHS=0 timeout 90 "$BIN/velo-bench" -m "$MODEL" -p 1 -n 128 -r 3 --backend "$BACKEND" \
       --device "$DEV" --plugin-dir "$PLUGINS" --bw-mib 64 --bw-passes 1 --json "$WORK/bench_nographs.json" \
       >> "$WORK/bench.log" 2>&1; then
    cat "$WORK/bench.log"
    read -r PP TG BPT < <("$PY" -c '
import json, sys
d = json.load(open(sys.argv[1]))
t = {x["test"]: x["median_tps"] for x in d["tests"]}
print(t.get("pp512", 0), t.get("tg128", 0), d["model"]["bytes_per_token"])' "$WORK/bench.json")
    TG0=$("$PY" -c '
import json, sys
d = json.load(open(sys.argv[1]))
print({x["test"]: x["median_tps"] for x in d["tests"]}.get("tg128", 0))' "$WORK/bench_nographs.json")
    frac() { "$PY" -c "print('%.2f' % ($1 * $2 / ($HBM_TBS * 1e12)))"; }
    BENCH+=("decode, 1 stream (tg128)|$TG|$(frac "$TG" "$BPT")|>= 1000")
    BENCH+=("decode, 1 stream, no CUDA graphs|$TG0|$(frac "$TG0" "$BPT")|-")
    BENCH+=("prefill 512 tokens (pp512)|$PP|-|>= 20000")
    result "velo-bench" PASS "$(printf 'pp512 %.0f t/s, tg128 %.0f t/s' "$PP" "$TG")"
  else
    tail -20 "$WORK/bench.log"
    result "velo-bench" FAIL "see $WORK/bench.log"
  fi
else
  result "velo-bench" FAIL "no model (see $WORK/make_model.log)"
fi

# --- 5. aggregate decode through velod ---------------------------------------
if [ -s "$MODEL" ] && [ -n "$PY" ] && "$PY" -c 'import grpc' 2>/dev/null; then
  REPO=$WORK/repo
  mkdir -p "$REPO/tinyllama"
  ln -sf "$MODEL" "$REPO/tinyllama/model.gguf"
  cat > "$REPO/tinyllama/config.json" <<EOF
{"file": "model.gguf", "backend": "$BACKEND:$DEV", "kv_cache_size": "${VELO_GPU_KV:-4GiB}",
 "parameters": {"max_active": 64, "max_queue_size": 1024}}
EOF
  PORT=$(( 20000 + RANDOM % 20000 ))
  "$BIN/velod" --listen 127.0.0.1:$PORT --plugin-dir "$PLUGINS" --model-repository "$REPO" \
    > "$WORK/velod_serve.log" 2>&1 &
  VPID=$!
  for _ in $(seq 300); do
    "$BIN/velo" health --server 127.0.0.1:$PORT >/dev/null 2>&1 && break
    kill -0 $VPID 2>/dev/null || break
    sleep 0.2
  done
  for c in 16 64; do
    if VELO_PYTHON_DIR=$BUILD/python timeout 120 "$PY" "$ROOT/sdk/tools/velo_bench_serve.py" \
         --server 127.0.0.1:$PORT --model tinyllama --concurrency $c --requests $((2 * c)) \
         --max-tokens 128 --duration-s 90 --json "$WORK/serve_$c.json" > "$WORK/serve_$c.log" 2>&1; then
      TPS=$("$PY" -c '
import json, sys
print(json.load(open(sys.argv[1]))["load"]["tokens_per_s"] or 0)' "$WORK/serve_$c.json")
      goal="-"; [ $c = 64 ] && goal=">= 15000"
      BENCH+=("decode, $c concurrent streams (velod)|$TPS|$("$PY" -c "print('%.2f' % ($TPS / $c * $BPT / ($HBM_TBS * 1e12)))")|$goal")
      result "serve bench, $c streams" PASS "$(printf '%.0f tokens/s' "$TPS")"
    else
      tail -5 "$WORK/serve_$c.log"
      result "serve bench, $c streams" FAIL "see $WORK/serve_$c.log"
    fi
  done
  kill $VPID 2>/dev/null; wait $VPID 2>/dev/null; VPID=
else
  result "serve bench" FAIL "needs the model and a python with grpcio ($PY)"
fi

# --- 6. the table ------------------------------------------------------------
ELAPSED=$(( $(date +%s) - T0 ))
table() {
echo "Velo GPU check, $(date -u +%Y-%m-%d), ${GPU_NAME:-unknown GPU} ($BACKEND:$DEV), ${ELAPSED} s; output in $WORK"
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
