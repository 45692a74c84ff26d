/* emu_kernels.cc - every kernel of kernels/, compiled as C++ against
 * cuda_emu.h (SAE_KERNEL_EMU must be defined, kernels/ on the include path).
 * The launchers keep their extern "C" names, so code built against
 * kernels.h links with this instead of the nvcc objects. */
#ifndef SAE_KERNEL_EMU
#error "build with -DSAE_KERNEL_EMU"
#endif
#include "activate.cu"
#include "decode.cu"
#include "preprocess.cu"
#include "topk.cu"
#include "train.cu"
#include "train_dense.cu"
#include "batchtopk.cu"
