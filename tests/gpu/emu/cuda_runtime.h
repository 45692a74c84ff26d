/* cuda_runtime.h (emulated) - the part of the CUDA runtime API that saed's
 * host code uses, implemented on the CPU by emu_runtime.cc. Builds that put
 * tests/gpu/emu first on the include path compile src/sae/backend_cuda.c and
 * kernels/ unchanged against it, so their logic runs in tests on machines
 * without a GPU (tests/gpu/meson.build: the *_emu tests).
 *
 * What it does: "device" memory is host memory from malloc, filled with 0xff
 * bytes (NaN floats, -1 integers) so reads of unwritten memory show; copies
 * and kernels run at once, in call order; streams and events only check their
 * arguments. What it cannot show: races between streams, timing, or anything
 * about the real hardware. emu_inject (below) makes a chosen call fail. */
#ifndef SAE_EMU_CUDA_RUNTIME_H
#define SAE_EMU_CUDA_RUNTIME_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum cudaError {
    cudaSuccess = 0,
    cudaErrorInvalidValue = 1,
    cudaErrorMemoryAllocation = 2,
    cudaErrorInsufficientDriver = 35,
    cudaErrorNoDevice = 100,
    cudaErrorInvalidDevice = 101,
    cudaErrorNoKernelImageForDevice = 209,
    cudaErrorNotReady = 600,
    cudaErrorIllegalAddress = 700,
    cudaErrorLaunchOutOfResources = 701,
    cudaErrorLaunchTimeout = 702,
    cudaErrorHardwareStackError = 714,
    cudaErrorIllegalInstruction = 715,
    cudaErrorMisalignedAddress = 716,
    cudaErrorInvalidAddressSpace = 717,
    cudaErrorInvalidPc = 718,
    cudaErrorLaunchFailure = 719,
    cudaErrorAssert = 710,
    cudaErrorECCUncorrectable = 214,
    cudaErrorNvlinkUncorrectable = 220,
    cudaErrorTensorMemoryLeak = 721,
    cudaErrorContextIsDestroyed = 709,
    cudaErrorStubLibrary = 34,
    cudaErrorSystemDriverMismatch = 803,
    cudaErrorCompatNotSupportedOnDevice = 804,
    cudaErrorUnknown = 999,
} cudaError_t;

enum cudaMemcpyKind {
    cudaMemcpyHostToHost = 0,
    cudaMemcpyHostToDevice = 1,
    cudaMemcpyDeviceToHost = 2,
    cudaMemcpyDeviceToDevice = 3,
    cudaMemcpyDefault = 4,
};

#define cudaStreamDefault 0x0
#define cudaStreamNonBlocking 0x1
#define cudaEventDefault 0x0
#define cudaEventDisableTiming 0x2

typedef struct emu_stream *cudaStream_t;
typedef struct emu_event *cudaEvent_t;

struct cudaDeviceProp {
    char name[256];
    int major, minor;
    size_t totalGlobalMem;
    int multiProcessorCount;
};

cudaError_t cudaGetDeviceCount(int *count);
cudaError_t cudaGetDeviceProperties(struct cudaDeviceProp *prop, int device);
cudaError_t cudaSetDevice(int device);
cudaError_t cudaGetDevice(int *device);
cudaError_t cudaDeviceSynchronize(void);
cudaError_t cudaGetLastError(void);
cudaError_t cudaPeekAtLastError(void);
const char *cudaGetErrorName(cudaError_t e);
const char *cudaGetErrorString(cudaError_t e);

cudaError_t cudaMalloc(void **p, size_t bytes);
cudaError_t cudaFree(void *p);
#define cudaHostAllocDefault 0x0
cudaError_t cudaHostAlloc(void **p, size_t bytes, unsigned flags);
cudaError_t cudaFreeHost(void *p);
cudaError_t cudaMemcpy(void *dst, const void *src, size_t bytes, enum cudaMemcpyKind kind);
cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t bytes, enum cudaMemcpyKind kind,
                            cudaStream_t stream);
cudaError_t cudaMemsetAsync(void *dst, int value, size_t bytes, cudaStream_t stream);

cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned flags);
cudaError_t cudaStreamDestroy(cudaStream_t s);
cudaError_t cudaStreamSynchronize(cudaStream_t s);
cudaError_t cudaStreamQuery(cudaStream_t s);
cudaError_t cudaStreamWaitEvent(cudaStream_t s, cudaEvent_t e, unsigned flags);
cudaError_t cudaEventCreateWithFlags(cudaEvent_t *e, unsigned flags);
cudaError_t cudaEventDestroy(cudaEvent_t e);
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s);
cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t start, cudaEvent_t end);

/* Test hooks. emu_inject("malloc", n): the n-th cudaMalloc from now (1 =
 * the next) fails with cudaErrorMemoryAllocation. emu_inject("sticky", n):
 * the n-th cudaMemcpyAsync from now fails with cudaErrorIllegalAddress, and so
 * does every runtime call after it, as a real sticky error would.
 * emu_reset() clears both and the sticky state. emu_live_allocs() counts the
 * cudaMalloc blocks not yet freed. */
void emu_inject(const char *what, int nth);
void emu_reset(void);
long emu_live_allocs(void);

#ifdef __cplusplus
}
#endif

#endif
