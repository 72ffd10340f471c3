/*
 * emu.h - a host emulation of the small part of CUDA that
 * backends/gpu_common/gpu_kernels.cu uses, so that every kernel can run on
 * a machine without a GPU (tests/gpu/emu/run_emu.sh).  It is included
 * before gpu_kernels.cu (g++ -include) and takes the place of gpu_device.h
 * (it defines that header's guard and macros).
 *
 * One launch runs the grid's blocks one after another, each as blockDim
 * fibers (ucontext) on the calling thread, so __shared__ (a static of the
 * kernel function) belongs to one block at a time.  __syncthreads is a
 * barrier of the block's fibers, a warp shuffle an exchange through a
 * per-warp buffer between two barriers of the warp's fibers: like the
 * hardware, a barrier or shuffle that some threads skip is reported here
 * as a deadlock (and is undefined there).  EMU_WARP (default 32) sets the warp width: 64
 * emulates AMD CDNA wavefronts, the width the HIP build uses there.
 *
 * Launches are synchronous; streams are ignored; there are no errors.
 * Device memory is host memory.  Not thread-safe: one launch at a time.
 */
#ifndef VELO_GPU_EMU_H
#define VELO_GPU_EMU_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>

#include <ucontext.h>

#include <functional>
#include <memory>
#include <vector>

#ifndef EMU_WARP
#define EMU_WARP 32
#endif

struct dim3 {
  unsigned x, y, z;
  dim3(unsigned a = 1, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {}
};
struct int4 {
  int x, y, z, w;
};
struct float4 {
  float x, y, z, w;
};
static inline int4 make_int4(int a, int b, int c, int d) { return int4{a, b, c, d}; }
static inline int min(int a, int b) { return a < b ? a : b; }
static inline long min(long a, long b) { return a < b ? a : b; }
static inline long long min(long long a, long long b) { return a < b ? a : b; }

namespace emu {
/* One GPU thread: a fiber (ucontext) with its own stack. */
struct Fiber {
  ucontext_t ctx;
  std::vector<char> stack;
  dim3 tid;
  bool done = false, waiting = false;
  int bar = -1;
};
/* A barrier: the block (0) or one warp (1 + w). */
struct Bar {
  int expected = 0, arrived = 0;
};
inline std::vector<Fiber> g_fibers;
inline std::vector<Bar> g_bars;
inline std::vector<uint64_t> g_xchg; /* one shuffle slot per thread */
inline int g_cur;
inline ucontext_t g_sched;
inline std::function<void()> *g_body;
inline dim3 t_thread, t_block, g_bdim, g_gdim;

/* Waits at barrier b: the last thread to arrive releases the others and
 * goes on; the others return to the scheduler until then. */
static inline void wait(int b) {
  Bar &B = g_bars[(size_t)b];
  if (++B.arrived == B.expected) {
    B.arrived = 0;
    for (auto &f : g_fibers)
      if (f.waiting && f.bar == b) f.waiting = false;
    return;
  }
  Fiber &f = g_fibers[(size_t)g_cur];
  f.waiting = true;
  f.bar = b;
  swapcontext(&f.ctx, &g_sched);
}
}  // namespace emu

#define threadIdx (emu::t_thread)
#define blockIdx (emu::t_block)
#define blockDim (emu::g_bdim)
#define gridDim (emu::g_gdim)

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))

static inline void __syncthreads() { emu::wait(0); }

namespace emu {
template <class T>
static inline T shfl_src(T v, unsigned src_lane_abs) {
  const unsigned tid = t_thread.x, w = tid / EMU_WARP;
  static_assert(sizeof(T) <= 8, "shuffle of a type wider than 8 bytes");
  uint64_t bits = 0;
  memcpy(&bits, &v, sizeof v);
  g_xchg[tid] = bits;
  wait(1 + (int)w);
  bits = g_xchg[w * EMU_WARP + src_lane_abs];
  wait(1 + (int)w);
  T r;
  memcpy(&r, &bits, sizeof r);
  return r;
}
template <class T>
static inline T shfl_xor(T v, int mask, int width) {
  const unsigned lane = t_thread.x % EMU_WARP;
  const unsigned seg = lane / (unsigned)width * (unsigned)width;
  return shfl_src(v, seg + ((lane - seg) ^ (unsigned)mask) % (unsigned)width);
}
template <class T>
static inline T shfl(T v, int src, int width) {
  const unsigned lane = t_thread.x % EMU_WARP;
  const unsigned seg = lane / (unsigned)width * (unsigned)width;
  return shfl_src(v, seg + (unsigned)src % (unsigned)width);
}
}  // namespace emu

static inline int atomicCAS(int *p, int cmp, int val) { /* fibers: never preempted */
  int old = *p;
  if (old == cmp) *p = val;
  return old;
}

/* What gpu_device.h provides. */
#define VELO_GPU_DEVICE_H 1
#define VGD_WARP EMU_WARP
#define VGD_SHFL_XOR(v, m) emu::shfl_xor((v), (m), VGD_WARP)
#define VGD_SHFL(v, l) emu::shfl((v), (l), VGD_WARP)
#define VGD_SYNCWARP() emu::wait(1 + (int)(emu::t_thread.x / EMU_WARP))
typedef void *vgd_stream_t;
typedef int vgd_error_t;
static inline int vgd_get_last_error(void) { return 0; }
#define VGD_SUCCESS 0

namespace emu {
/* kernel<<<grid, block, shmem, stream>>>(args) becomes
 * emu::Launch(grid, block, shmem, stream).run(kernel, args). */
struct Launch {
  dim3 grid, blk;
  Launch(dim3 gr, dim3 bl, size_t = 0, void * = nullptr) : grid(gr), blk(bl) {}
  template <class... P, class... A>
  void run(void (*k)(P...), A &&...a) {
    const unsigned n = blk.x * blk.y * blk.z;
    if (n == 0 || n > 1024 || n % EMU_WARP || grid.x == 0 || grid.y == 0 || grid.z == 0) {
      fprintf(stderr, "emu: invalid launch configuration (%u x %u x %u blocks of %u threads)\n", grid.x,
              grid.y, grid.z, n);
      abort();
    }
    g_bdim = blk;
    g_gdim = grid;
    g_fibers.resize(n);
    g_bars.assign(1 + n / EMU_WARP, Bar());
    g_bars[0].expected = (int)n;
    for (unsigned w = 0; w < n / EMU_WARP; w++) g_bars[1 + w].expected = EMU_WARP;
    g_xchg.assign(n, 0);
    std::function<void()> body = [&]() { k(a...); };
    g_body = &body;
    for (unsigned z = 0; z < grid.z; z++)
      for (unsigned y = 0; y < grid.y; y++)
        for (unsigned x = 0; x < grid.x; x++) {
          t_block = dim3(x, y, z);
          for (unsigned i = 0; i < n; i++) {
            Fiber &f = g_fibers[i];
            f.stack.resize(256 * 1024);
            f.tid = dim3(i % blk.x, i / blk.x % blk.y, i / (blk.x * blk.y));
            f.done = f.waiting = false;
            getcontext(&f.ctx);
            f.ctx.uc_stack.ss_sp = f.stack.data();
            f.ctx.uc_stack.ss_size = f.stack.size();
            f.ctx.uc_link = &g_sched;
            makecontext(&f.ctx, (void (*)())trampoline, 0);
          }
          for (;;) {
            bool progress = false, live = false;
            for (unsigned i = 0; i < n; i++) {
              Fiber &f = g_fibers[i];
              if (f.done) continue;
              live = true;
              if (f.waiting) continue;
              g_cur = (int)i;
              t_thread = f.tid;
              swapcontext(&g_sched, &f.ctx);
              progress = true;
            }
            if (!live) break;
            if (!progress) {
              fprintf(stderr, "emu: deadlock in block (%u, %u, %u): threads wait at barriers others never reach\n",
                      x, y, z);
              abort();
            }
          }
          for (auto &b : g_bars)
            if (b.arrived) {
              fprintf(stderr, "emu: block (%u, %u, %u) ended with threads still at a barrier\n", x, y, z);
              abort();
            }
        }
  }
  static void trampoline() {
    (*g_body)();
    g_fibers[(size_t)g_cur].done = true;
  }
};
}  // namespace emu

#endif
