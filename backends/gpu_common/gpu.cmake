# gpu.cmake - the build options of the GPU backend plugins, included from
# the top-level CMakeLists.txt (it may enable the CUDA language, which must
# happen at the top level).
#
#   VELO_CUDA = AUTO | ON | OFF   build libvelo-backend-cuda.so.  AUTO builds
#                                 it when nvcc is found (PATH, CUDACXX,
#                                 CMAKE_CUDA_COMPILER, or /usr/local/cuda);
#                                 ON fails the configure without it.
#   VELO_HIP  = AUTO | ON | OFF   build libvelo-backend-hip.so with hipcc
#                                 (Debian: hipcc libamdhip64-dev, ROCm 5.2).
#   CMAKE_CUDA_ARCHITECTURES      default "80-real;90": sm_80 and sm_90
#                                 machine code plus compute_90 PTX (A100,
#                                 H100/H800/H200, and newer GPUs through PTX).
#   VELO_HIP_ARCHITECTURES        default "gfx90a;gfx908;gfx1030" (MI200,
#                                 MI100, RDNA2).  gfx942 (MI300) needs
#                                 ROCm >= 5.7: Debian's 5.2 rejects it.
#
# Sets VELO_BUILD_CUDA and VELO_BUILD_HIP for backends/CMakeLists.txt.

foreach(opt VELO_CUDA VELO_HIP)
  string(TOUPPER "${${opt}}" _v)
  if(_v MATCHES "^(ON|TRUE|YES|1)$")
    set(_v ON)
  elseif(_v MATCHES "^(OFF|FALSE|NO|0)$")
    set(_v OFF)
  elseif(NOT _v STREQUAL "AUTO")
    message(FATAL_ERROR "${opt} must be AUTO, ON or OFF, got '${${opt}}'")
  endif()
  set(${opt}_MODE ${_v})
endforeach()

set(VELO_BUILD_CUDA OFF)
if(NOT VELO_CUDA_MODE STREQUAL "OFF")
  if(NOT CMAKE_CUDA_COMPILER AND NOT DEFINED ENV{CUDACXX})
    find_program(VELO_NVCC nvcc HINTS ENV CUDA_HOME PATHS /usr/local/cuda/bin PATH_SUFFIXES bin)
    if(VELO_NVCC)
      set(CMAKE_CUDA_COMPILER ${VELO_NVCC})
    endif()
  endif()
  include(CheckLanguage)
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
      set(CMAKE_CUDA_ARCHITECTURES "80-real;90" CACHE STRING
          "CUDA targets: sm_80 and sm_90 machine code, compute_90 PTX")
    endif()
    enable_language(CUDA)
    set(VELO_BUILD_CUDA ON)
    message(STATUS "CUDA backend: building for ${CMAKE_CUDA_ARCHITECTURES} with ${CMAKE_CUDA_COMPILER}")
  elseif(VELO_CUDA_MODE STREQUAL "ON")
    message(FATAL_ERROR "VELO_CUDA=ON, but no working CUDA compiler (nvcc) was found: install the CUDA "
                        "toolkit, put nvcc on PATH or pass -DCMAKE_CUDA_COMPILER=/path/to/nvcc")
  else()
    message(STATUS "CUDA backend: not built (VELO_CUDA=AUTO and no nvcc found)")
  endif()
endif()

set(VELO_HIP_ARCHITECTURES "gfx90a;gfx908;gfx1030" CACHE STRING
    "AMD GPU targets of the HIP backend (gfx942/MI300 needs ROCm >= 5.7)")
set(VELO_BUILD_HIP OFF)
if(NOT VELO_HIP_MODE STREQUAL "OFF")
  find_program(VELO_HIPCC hipcc PATHS /opt/rocm/bin)
  find_library(VELO_AMDHIP64 amdhip64 PATHS /opt/rocm/lib)
  find_path(VELO_HIP_INCLUDE hip/hip_runtime_api.h PATHS /opt/rocm/include)
  if(VELO_HIPCC AND VELO_AMDHIP64 AND VELO_HIP_INCLUDE)
    set(VELO_BUILD_HIP ON)
    message(STATUS "HIP backend: building for ${VELO_HIP_ARCHITECTURES} with ${VELO_HIPCC}")
  elseif(VELO_HIP_MODE STREQUAL "ON")
    message(FATAL_ERROR "VELO_HIP=ON, but hipcc (${VELO_HIPCC}), libamdhip64 (${VELO_AMDHIP64}) or the HIP "
                        "headers (${VELO_HIP_INCLUDE}) were not found: on Debian, apt-get install "
                        "--no-install-recommends hipcc libamdhip64-dev")
  else()
    message(STATUS "HIP backend: not built (VELO_HIP=AUTO and no hipcc/libamdhip64 found)")
  endif()
endif()
