/* launch.cuh - included first by every .cu here: the CUDA runtime, and
 * LAUNCH(kernel, grid, block, stream, args...), which is
 * kernel<<<grid, block, 0, stream>>>(args...).
 *
 * Under SAE_KERNEL_EMU the same sources compile as plain C++ against
 * tests/gpu/emu/cuda_emu.h, which runs each block on CPU threads with real
 * barriers and warp collectives: tests/gpu/test_kernels_emu checks the
 * kernels' logic against the CPU backend on machines without a GPU. Kernels
 * must therefore use only what cuda_emu.h provides (it says what that is). */
#ifndef SAE_LAUNCH_CUH
#define SAE_LAUNCH_CUH

#ifdef SAE_KERNEL_EMU
#include "cuda_emu.h"
#define LAUNCH(kernel, grid, block, stream, ...) \
    ((void)(stream), emu_launch((grid), (block), [=]() { kernel(__VA_ARGS__); }))
#else
#include <cuda_runtime.h>
#define LAUNCH(kernel, grid, block, stream, ...) \
    kernel<<<(grid), (block), 0, (cudaStream_t)(stream)>>>(__VA_ARGS__)
#endif

#endif
