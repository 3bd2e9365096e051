// Emulator stand-in for c10/cuda/CUDAException.h: the two checks our launchers use.
#pragma once

#include <cuda_runtime_api.h>

#include <stdexcept>
#include <string>

#define C10_CUDA_CHECK(EXPR)                                                                        \
  do {                                                                                              \
    const cudaError_t rsf_emu_error = (EXPR);                                                       \
    if (rsf_emu_error != cudaSuccess)                                                               \
      throw std::runtime_error(std::string("CUDA error: ") + cudaGetErrorString(rsf_emu_error));    \
  } while (0)

#define C10_CUDA_KERNEL_LAUNCH_CHECK() C10_CUDA_CHECK(cudaGetLastError())
