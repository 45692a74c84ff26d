/* emu_runtime.cc - the emulated CUDA runtime and cuBLAS (cuda_runtime.h,
 * cublas_v2.h) and the block/warp machinery of cuda_emu.h. */
#include <stdio.h>
#include <stdlib.h>

#include <condition_variable>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "cublas_v2.h"
#include "cuda_emu.h"

thread_local emu_dim3 threadIdx, blockIdx, blockDim, gridDim;

/* ---- blocks and warps ------------------------------------------------------- */
namespace {

struct Barrier {
    explicit Barrier(int n) : n(n) {}
    void wait()
    {
        std::unique_lock<std::mutex> l(mu);
        const unsigned g = gen;
        if (++count == n) {
            count = 0;
            gen++;
            cv.notify_all();
        } else {
            cv.wait(l, [&] { return g != gen; });
        }
    }
    std::mutex mu;
    std::condition_variable cv;
    int n, count = 0;
    unsigned gen = 0;
};

struct Block {
    explicit Block(unsigned threads) : block((int)threads)
    {
        for (unsigned w = 0; w * 32 < threads; w++)
            warp.emplace_back(new Barrier((int)(threads - w * 32 < 32 ? threads - w * 32 : 32)));
    }
    Barrier block;
    std::vector<std::unique_ptr<Barrier>> warp;
    uint64_t slot[32][32];
};

thread_local Block *cur;

int warp_size(unsigned w)
{
    const unsigned left = blockDim.x - w * 32;
    return left < 32 ? (int)left : 32;
}

} // namespace

void emu_launch(unsigned grid, unsigned block, std::function<void()> fn)
{
    if (grid == 0 || block == 0 || block > 1024) {
        fprintf(stderr, "emu_launch: bad launch %u x %u\n", grid, block);
        abort();
    }
    Block b(block);
    std::vector<std::thread> threads;
    threads.reserve(block);
    /* one thread per CUDA thread runs every block in turn; the barrier after
     * each block keeps the static "__shared__" memory to one block at a time */
    for (unsigned t = 0; t < block; t++)
        threads.emplace_back([&b, &fn, t, grid, block] {
            cur = &b;
            threadIdx = {t, 0, 0};
            blockDim = {block, 1, 1};
            gridDim = {grid, 1, 1};
            for (unsigned g = 0; g < grid; g++) {
                blockIdx = {g, 0, 0};
                fn();
                b.block.wait();
            }
        });
    for (auto &t : threads)
        t.join();
}

void __syncthreads() { cur->block.wait(); }

void __syncwarp(unsigned) { cur->warp[threadIdx.x / 32]->wait(); }

unsigned __ballot_sync(unsigned, int pred)
{
    const unsigned w = threadIdx.x / 32, lane = threadIdx.x & 31;
    cur->slot[w][lane] = pred != 0;
    cur->warp[w]->wait();
    unsigned r = 0;
    for (int l = 0; l < warp_size(w); l++)
        r |= (unsigned)cur->slot[w][l] << l;
    cur->warp[w]->wait();
    return r;
}

uint64_t emu_warp_exchange(uint64_t v, int src)
{
    const unsigned w = threadIdx.x / 32, lane = threadIdx.x & 31;
    cur->slot[w][lane] = v;
    cur->warp[w]->wait();
    const uint64_t r = src >= 0 && src < warp_size(w) ? cur->slot[w][src] : v;
    cur->warp[w]->wait();
    return r;
}

/* ---- runtime ------------------------------------------------------------------ */
struct emu_stream {
    int unused;
};
struct emu_event {
    int unused;
};
struct emu_blas {
    int unused;
};

static std::mutex g_mu;
static long g_live;
static int g_fail_malloc, g_fail_sticky;
static cudaError_t g_sticky = cudaSuccess;

#define STICKY()                                \
    do {                                        \
        std::lock_guard<std::mutex> l_(g_mu);   \
        if (g_sticky != cudaSuccess)            \
            return g_sticky;                    \
    } while (0)

extern "C" {

void emu_inject(const char *what, int nth)
{
    std::lock_guard<std::mutex> l(g_mu);
    if (!strcmp(what, "malloc"))
        g_fail_malloc = nth;
    else if (!strcmp(what, "sticky"))
        g_fail_sticky = nth;
}

void emu_reset(void)
{
    std::lock_guard<std::mutex> l(g_mu);
    g_fail_malloc = g_fail_sticky = 0;
    g_sticky = cudaSuccess;
}

long emu_live_allocs(void)
{
    std::lock_guard<std::mutex> l(g_mu);
    return g_live;
}

cudaError_t cudaGetDeviceCount(int *count)
{
    STICKY();
    *count = 1;
    return cudaSuccess;
}

cudaError_t cudaGetDeviceProperties(struct cudaDeviceProp *prop, int device)
{
    STICKY();
    if (device != 0)
        return cudaErrorInvalidDevice;
    memset(prop, 0, sizeof *prop);
    snprintf(prop->name, sizeof prop->name, "emulated GPU (CPU threads)");
    prop->major = 9;
    prop->minor = 0;
    prop->totalGlobalMem = (size_t)16 << 30;
    prop->multiProcessorCount = 1;
    return cudaSuccess;
}

cudaError_t cudaSetDevice(int device)
{
    STICKY();
    return device == 0 ? cudaSuccess : cudaErrorInvalidDevice;
}

cudaError_t cudaGetDevice(int *device)
{
    *device = 0;
    return cudaSuccess;
}

cudaError_t cudaDeviceSynchronize(void)
{
    STICKY();
    return cudaSuccess;
}

cudaError_t cudaGetLastError(void)
{
    STICKY();
    return cudaSuccess;
}

cudaError_t cudaPeekAtLastError(void) { return cudaGetLastError(); }

const char *cudaGetErrorName(cudaError_t e)
{
    switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorIllegalAddress: return "cudaErrorIllegalAddress";
    case cudaErrorNoDevice: return "cudaErrorNoDevice";
    default: return "cudaErrorOther";
    }
}

const char *cudaGetErrorString(cudaError_t e)
{
    switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorIllegalAddress: return "an illegal memory access was encountered";
    default: return "emulated error";
    }
}

cudaError_t cudaMalloc(void **p, size_t bytes)
{
    STICKY();
    {
        std::lock_guard<std::mutex> l(g_mu);
        if (g_fail_malloc > 0 && --g_fail_malloc == 0) {
            *p = NULL;
            return cudaErrorMemoryAllocation;
        }
    }
    /* exactly `bytes`, so ASan sees a 1-byte overrun; malloc aligns to 16,
     * which is all the kernels assume (cudaMalloc gives 256) */
    *p = malloc(bytes ? bytes : 1);
    if (!*p)
        return cudaErrorMemoryAllocation;
    memset(*p, 0xff, bytes);
    std::lock_guard<std::mutex> l(g_mu);
    g_live++;
    return cudaSuccess;
}

cudaError_t cudaFree(void *p)
{
    if (!p)
        return cudaSuccess;
    free(p);
    std::lock_guard<std::mutex> l(g_mu);
    g_live--;
    return g_sticky;
}

cudaError_t cudaHostAlloc(void **p, size_t bytes, unsigned)
{
    STICKY();
    *p = malloc(bytes ? bytes : 1);
    return *p ? cudaSuccess : cudaErrorMemoryAllocation;
}

cudaError_t cudaFreeHost(void *p)
{
    free(p);
    return cudaSuccess;
}

cudaError_t cudaMemcpy(void *dst, const void *src, size_t bytes, enum cudaMemcpyKind)
{
    STICKY();
    if (bytes)
        memcpy(dst, src, bytes);
    return cudaSuccess;
}

cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t bytes, enum cudaMemcpyKind kind,
                            cudaStream_t s)
{
    if (!s)
        return cudaErrorInvalidValue;   /* saed always names its stream */
    {
        std::lock_guard<std::mutex> l(g_mu);
        if (g_fail_sticky > 0 && --g_fail_sticky == 0)
            g_sticky = cudaErrorIllegalAddress;
    }
    return cudaMemcpy(dst, src, bytes, kind);
}

cudaError_t cudaMemsetAsync(void *dst, int value, size_t bytes, cudaStream_t s)
{
    if (!s)
        return cudaErrorInvalidValue;
    STICKY();
    memset(dst, value, bytes);
    return cudaSuccess;
}

cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned)
{
    STICKY();
    *s = new emu_stream();
    return cudaSuccess;
}

cudaError_t cudaStreamDestroy(cudaStream_t s)
{
    delete s;
    return cudaSuccess;
}

cudaError_t cudaStreamSynchronize(cudaStream_t s)
{
    STICKY();
    return s ? cudaSuccess : cudaErrorInvalidValue;
}

cudaError_t cudaStreamQuery(cudaStream_t s) { return cudaStreamSynchronize(s); }

cudaError_t cudaStreamWaitEvent(cudaStream_t s, cudaEvent_t e, unsigned)
{
    STICKY();
    return s && e ? cudaSuccess : cudaErrorInvalidValue;
}

cudaError_t cudaEventCreateWithFlags(cudaEvent_t *e, unsigned)
{
    STICKY();
    *e = new emu_event();
    return cudaSuccess;
}

cudaError_t cudaEventDestroy(cudaEvent_t e)
{
    delete e;
    return cudaSuccess;
}

cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s)
{
    STICKY();
    return s && e ? cudaSuccess : cudaErrorInvalidValue;
}

cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t a, cudaEvent_t b)
{
    STICKY();
    if (!ms || !a || !b)
        return cudaErrorInvalidValue;
    *ms = 0.0f;     /* everything ran at once */
    return cudaSuccess;
}

/* ---- cuBLAS ------------------------------------------------------------------- */
cublasStatus_t cublasCreate(cublasHandle_t *h)
{
    *h = new emu_blas();
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasDestroy(cublasHandle_t h)
{
    delete h;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetStream(cublasHandle_t h, cudaStream_t s)
{
    return h && s ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_INVALID_VALUE;
}

cublasStatus_t cublasSetMathMode(cublasHandle_t h, cublasMath_t)
{
    return h ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_NOT_INITIALIZED;
}

const char *cublasGetStatusName(cublasStatus_t s)
{
    return s == CUBLAS_STATUS_SUCCESS ? "CUBLAS_STATUS_SUCCESS" : "CUBLAS_STATUS_(emulated error)";
}

/* Column-major C = alpha op(A) op(B) + beta C; C is not read when beta == 0
 * (it may hold NaN), as cuBLAS. */
cublasStatus_t cublasSgemm(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m,
                           int n, int k, const float *alpha, const float *A, int lda,
                           const float *B, int ldb, const float *beta, float *C, int ldc)
{
    if (!h || m < 0 || n < 0 || k < 0)
        return CUBLAS_STATUS_INVALID_VALUE;
    {
        std::lock_guard<std::mutex> l(g_mu);
        if (g_sticky != cudaSuccess)
            return CUBLAS_STATUS_EXECUTION_FAILED;
    }
    for (int j = 0; j < n; j++)
        for (int i = 0; i < m; i++) {
            float acc = 0.0f;
            for (int p = k - 1; p >= 0; p--) {
                const float a = ta == CUBLAS_OP_N ? A[i + (size_t)p * lda] : A[p + (size_t)i * lda];
                const float b = tb == CUBLAS_OP_N ? B[p + (size_t)j * ldb] : B[j + (size_t)p * ldb];
                acc += a * b;
            }
            float *c = C + i + (size_t)j * ldc;
            *c = *alpha * acc + (*beta != 0.0f ? *beta * *c : 0.0f);
        }
    return CUBLAS_STATUS_SUCCESS;
}

} // extern "C"
