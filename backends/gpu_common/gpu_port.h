/*
 * gpu_port.h - the host-side half of the portability layer: the handful of
 * runtime calls the GPU backends' host code (gpu_backend.c, plain C) makes,
 * under one gpu* name each, mapped onto the CUDA runtime (default) or the
 * HIP runtime (VELO_GPU_HIP defined).  Both runtimes' C headers are used
 * from C here: cuda_runtime_api.h as is, hip/hip_runtime_api.h with
 * __HIP_PLATFORM_AMD__.
 *
 * The CUDA build links the static CUDA runtime (cudart_static), which
 * opens the driver (libcuda.so.1) with dlopen on first use: the plugin
 * loads on a machine without a driver, and the first runtime call reports
 * cudaErrorInsufficientDriver.  Nothing here may call the driver API
 * directly (linking -lcuda would make the plugin fail to load there).
 *
 * VELO_GPU_NAME is the plugin's backend name ("cuda" or "hip"), used in
 * every message; VELO_GPU_VENDOR names the GPUs ("NVIDIA", "AMD").
 */
#ifndef VELO_GPU_PORT_H
#define VELO_GPU_PORT_H

#if defined(VELO_GPU_HIP)
#ifndef __HIP_PLATFORM_AMD__
#define __HIP_PLATFORM_AMD__ 1
#endif
#include <hip/hip_runtime_api.h>

#define VELO_GPU_NAME "hip"
#define VELO_GPU_VENDOR "AMD"
#define VELO_GPU_RUNTIME "HIP"
#define VELO_GPU_GRAPHS_ENV "VELO_HIP_GRAPHS"
#define VELO_GPU_GRAPHS_DEFAULT 0 /* ROCm 5.2's graphs are not worth it: off unless asked */

typedef hipError_t gpuError_t;
typedef hipStream_t gpuStream_t;
typedef hipGraph_t gpuGraph_t;
typedef hipGraphExec_t gpuGraphExec_t;
typedef hipDeviceProp_t gpuDeviceProp;
#define gpuSuccess hipSuccess
#define gpuErrorInsufficientDriver hipErrorInsufficientDriver
#define gpuErrorNoDevice hipErrorNoDevice
#define gpuErrorInvalidValue hipErrorInvalidValue
#define gpuGetErrorName hipGetErrorName
#define gpuGetErrorString hipGetErrorString
#define gpuGetLastError hipGetLastError
#define gpuGetDeviceCount hipGetDeviceCount
#define gpuDriverGetVersion hipDriverGetVersion
#define gpuRuntimeGetVersion hipRuntimeGetVersion
#define gpuGetDeviceProperties hipGetDeviceProperties
#define gpuSetDevice hipSetDevice
#define gpuMalloc hipMalloc
#define gpuFree hipFree
#define gpuHostAlloc(p, n) hipHostMalloc((p), (n), hipHostMallocDefault)
#define gpuFreeHost hipHostFree
#define gpuMemcpy hipMemcpy
#define gpuMemcpyAsync hipMemcpyAsync
#define gpuMemsetAsync hipMemsetAsync
#define gpuMemcpyHostToDevice hipMemcpyHostToDevice
#define gpuMemcpyDeviceToHost hipMemcpyDeviceToHost
#define gpuStreamCreateNonBlocking(s) hipStreamCreateWithFlags((s), hipStreamNonBlocking)
#define gpuStreamDestroy hipStreamDestroy
#define gpuStreamSynchronize hipStreamSynchronize
#define gpuStreamBeginCapture(s) hipStreamBeginCapture((s), hipStreamCaptureModeThreadLocal)
#define gpuStreamEndCapture hipStreamEndCapture
#define gpuGraphInstantiate(e, g) hipGraphInstantiateWithFlags((e), (g), 0)
#define gpuGraphLaunch hipGraphLaunch
#define gpuGraphExecDestroy hipGraphExecDestroy
#define gpuGraphDestroy hipGraphDestroy
#else
#include <cuda_runtime_api.h>

#define VELO_GPU_NAME "cuda"
#define VELO_GPU_VENDOR "NVIDIA"
#define VELO_GPU_RUNTIME "CUDA"
#define VELO_GPU_GRAPHS_ENV "VELO_CUDA_GRAPHS"
#define VELO_GPU_GRAPHS_DEFAULT 1

typedef cudaError_t gpuError_t;
typedef cudaStream_t gpuStream_t;
typedef cudaGraph_t gpuGraph_t;
typedef cudaGraphExec_t gpuGraphExec_t;
typedef struct cudaDeviceProp gpuDeviceProp;
#define gpuSuccess cudaSuccess
#define gpuErrorInsufficientDriver cudaErrorInsufficientDriver
#define gpuErrorNoDevice cudaErrorNoDevice
#define gpuErrorInvalidValue cudaErrorInvalidValue
#define gpuGetErrorName cudaGetErrorName
#define gpuGetErrorString cudaGetErrorString
#define gpuGetLastError cudaGetLastError
#define gpuGetDeviceCount cudaGetDeviceCount
#define gpuDriverGetVersion cudaDriverGetVersion
#define gpuRuntimeGetVersion cudaRuntimeGetVersion
#define gpuGetDeviceProperties cudaGetDeviceProperties
#define gpuSetDevice cudaSetDevice
#define gpuMalloc cudaMalloc
#define gpuFree cudaFree
#define gpuHostAlloc(p, n) cudaMallocHost((p), (n))
#define gpuFreeHost cudaFreeHost
#define gpuMemcpy cudaMemcpy
#define gpuMemcpyAsync cudaMemcpyAsync
#define gpuMemsetAsync cudaMemsetAsync
#define gpuMemcpyHostToDevice cudaMemcpyHostToDevice
#define gpuMemcpyDeviceToHost cudaMemcpyDeviceToHost
#define gpuStreamCreateNonBlocking(s) cudaStreamCreateWithFlags((s), cudaStreamNonBlocking)
#define gpuStreamDestroy cudaStreamDestroy
#define gpuStreamSynchronize cudaStreamSynchronize
#define gpuStreamBeginCapture(s) cudaStreamBeginCapture((s), cudaStreamCaptureModeThreadLocal)
#define gpuStreamEndCapture cudaStreamEndCapture
#define gpuGraphInstantiate(e, g) cudaGraphInstantiateWithFlags((e), (g), 0)
#define gpuGraphLaunch cudaGraphLaunch
#define gpuGraphExecDestroy cudaGraphExecDestroy
#define gpuGraphDestroy cudaGraphDestroy
#endif

#endif /* VELO_GPU_PORT_H */
