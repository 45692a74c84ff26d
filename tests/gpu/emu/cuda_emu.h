/* cuda_emu.h - the device side of CUDA that kernels/ uses, as plain C++ on
 * CPU threads (kernels/launch.cuh includes it under SAE_KERNEL_EMU).
 *
 * A launch runs its blocks one after another; each block runs blockDim real
 * threads, so __syncthreads is a real barrier and the warp collectives
 * (__ballot_sync, __shfl_*_sync, __syncwarp) are real rendezvous of the 32
 * threads of a warp. Consequences: a kernel whose threads do not all reach a
 * barrier or a collective hangs here (on the GPU it is undefined); data races
 * between barriers are real races (run the emu tests under TSan to see them).
 * Only full-warp masks are supported. __shared__ becomes `static`: one copy,
 * shared by the block's threads, reused by the next block. */
#ifndef SAE_CUDA_EMU_H
#define SAE_CUDA_EMU_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#include <functional>

#include "cuda_runtime.h"

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static

struct emu_dim3 {
    unsigned x, y, z;
};
extern thread_local emu_dim3 threadIdx, blockIdx, blockDim, gridDim;

void emu_launch(unsigned grid, unsigned block, std::function<void()> fn);

void __syncthreads();
void __syncwarp(unsigned mask = 0xffffffffu);
unsigned __ballot_sync(unsigned mask, int pred);
/* every lane of the warp calls it; returns lane src's v (own v if src is out of range) */
uint64_t emu_warp_exchange(uint64_t v, int src);

template <class T> static inline uint64_t emu_bits(T v)
{
    uint64_t u = 0;
    memcpy(&u, &v, sizeof v);
    return u;
}
template <class T> static inline T emu_unbits(uint64_t u)
{
    T v;
    memcpy(&v, &u, sizeof v);
    return v;
}
template <class T> static inline T __shfl_sync(unsigned, T v, int src)
{
    return emu_unbits<T>(emu_warp_exchange(emu_bits(v), src & 31));
}
template <class T> static inline T __shfl_up_sync(unsigned, T v, unsigned delta)
{
    const int lane = threadIdx.x & 31;
    return emu_unbits<T>(emu_warp_exchange(emu_bits(v), lane >= (int)delta ? lane - (int)delta : lane));
}
template <class T> static inline T __shfl_down_sync(unsigned, T v, unsigned delta)
{
    const int lane = threadIdx.x & 31;
    return emu_unbits<T>(emu_warp_exchange(emu_bits(v), lane + (int)delta < 32 ? lane + (int)delta : lane));
}

static inline int atomicAdd(int *p, int v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }
static inline unsigned atomicAdd(unsigned *p, unsigned v)
{
    return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST);
}

static inline unsigned long long atomicAdd(unsigned long long *p, unsigned long long v)
{
    return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST);
}
static inline unsigned atomicOr(unsigned *p, unsigned v)
{
    return __atomic_fetch_or(p, v, __ATOMIC_SEQ_CST);
}

static inline int __popc(unsigned x) { return __builtin_popcount(x); }
static inline int __ffs(unsigned x) { return __builtin_ffs((int)x); }
static inline unsigned __float_as_uint(float f) { return emu_unbits<unsigned>(emu_bits(f)); }
static inline float __uint_as_float(unsigned u) { return emu_unbits<float>(u); }
static inline int __float_as_int(float f) { return emu_unbits<int>(emu_bits(f)); }
static inline float __int_as_float(int i) { return emu_unbits<float>(i); }
static inline long long __double_as_longlong(double f) { return (long long)emu_bits(f); }
static inline float __fadd_rn(float a, float b) { return a + b; }
static inline float __fsub_rn(float a, float b) { return a - b; }
static inline float __fmul_rn(float a, float b) { return a * b; }
static inline float __fdiv_rn(float a, float b) { return a / b; }
static inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
/* glibc declares __logf and __expf itself: the fast intrinsics become macros */
#define __logf(x) logf(x)
#define __expf(x) expf(x)
static inline double __dadd_rn(double a, double b) { return a + b; }
static inline double __dsub_rn(double a, double b) { return a - b; }
static inline double __dmul_rn(double a, double b) { return a * b; }
static inline double __ddiv_rn(double a, double b) { return a / b; }
static inline float __double2float_rd(double x)
{
    float f = (float)x;
    if ((double)f > x)
        f = nextafterf(f, -INFINITY);
    return f;
}
static inline float __double2float_ru(double x)
{
    float f = (float)x;
    if ((double)f < x)
        f = nextafterf(f, INFINITY);
    return f;
}
template <class T> static inline T __ldg(const T *p) { return *p; }

struct alignas(16) float4 {
    float x, y, z, w;
};
static inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }

#endif
