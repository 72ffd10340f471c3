/*
 * gpu_device.h - the thin portability layer that lets one kernel source
 * (gpu_kernels.cu) compile with nvcc for NVIDIA GPUs and with hipcc for AMD
 * GPUs.  Device code includes this instead of cuda_runtime.h or
 * hip/hip_runtime.h.
 *
 * Wavefronts: NVIDIA warps are 32 lanes; AMD CDNA (gfx908, gfx90a, gfx94x)
 * wavefronts are 64 lanes, RDNA (gfx10xx, gfx11xx) runs 32 by default.
 * VGD_WARP is the width the device code is being compiled for (a
 * compile-time constant per target: HIP-Clang's __AMDGCN_WAVEFRONT_SIZE),
 * and every warp reduction, lane index and shuffle width in the kernels is
 * written in terms of it: no 32 is assumed anywhere a wavefront is meant.
 * (32 does appear as a data size: Q8_0/Q4_0 blocks and the F16 block of
 * the canonical order hold 32 elements whatever the hardware.)  Host code
 * never depends on VGD_WARP: launch shapes are fixed thread counts that
 * are multiples of 64.
 *
 * HIP 5.2 has no __shfl_*_sync: the HIP forms take the width and work on
 * the whole wavefront (lanes run in lockstep there), so VGD_SYNCWARP is a
 * no-op on HIP.
 */
#ifndef VELO_GPU_DEVICE_H
#define VELO_GPU_DEVICE_H

#if defined(__HIPCC__)
#include <hip/hip_runtime.h>
#if defined(__HIP_DEVICE_COMPILE__)
#define VGD_WARP __AMDGCN_WAVEFRONT_SIZE
#else
#define VGD_WARP 64 /* host pass: parsed, never run */
#endif
#define VGD_SHFL_XOR(v, m) __shfl_xor((v), (m), VGD_WARP)
#define VGD_SHFL(v, l) __shfl((v), (l), VGD_WARP)
#define VGD_SYNCWARP() \
  do {                 \
  } while (0)
typedef hipStream_t vgd_stream_t;
typedef hipError_t vgd_error_t;
#define vgd_get_last_error hipGetLastError
#define VGD_SUCCESS hipSuccess
#else
#include <cuda_runtime.h>
#define VGD_WARP 32
#define VGD_SHFL_XOR(v, m) __shfl_xor_sync(0xffffffffu, (v), (m), VGD_WARP)
#define VGD_SHFL(v, l) __shfl_sync(0xffffffffu, (v), (l), VGD_WARP)
#define VGD_SYNCWARP() __syncwarp()
typedef cudaStream_t vgd_stream_t;
typedef cudaError_t vgd_error_t;
#define vgd_get_last_error cudaGetLastError
#define VGD_SUCCESS cudaSuccess
#endif

/* dp4a: vgb_dp4a in gpu_blocks.h (shared with the host-side tests). */

#endif /* VELO_GPU_DEVICE_H */
