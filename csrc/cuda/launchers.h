/* Torch-free launchers of the CUDA kernels in the csrc/cuda/ sources.
 *
 * The .cu files include only CUDA headers (the CPU build of torch ships incomplete CUDA
 * headers), so each kernel is reached through a plain C function taking raw device pointers,
 * sizes and a stream. csrc/binding.cpp checks the tensors, takes the current stream from torch
 * and calls these. Every launcher returns cudaGetLastError() after its launch (cudaSuccess for
 * an empty problem, which launches nothing); it never synchronises.
 *
 * INT4 layout (same as csrc/cpu/int4_pack.h): a row of k values becomes (k + 1) / 2 bytes,
 * element 2i in the low nibble of byte i, element 2i+1 in the high nibble, two's-complement
 * nibbles for signed values, zero padding nibble for odd k.
 */
#ifndef ZSQ_CSRC_CUDA_LAUNCHERS_H_
#define ZSQ_CSRC_CUDA_LAUNCHERS_H_

#include <stdint.h>

#include <cuda_runtime_api.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Packs rows x k values (row-major, contiguous) from `src` into rows x (k + 1) / 2 bytes of
 * `dst`. `is_signed` selects the valid range: [-8, 7] for int8 input, [0, 15] for uint8 input
 * (`src` is read as raw bytes either way). Out-of-range values set *out_of_range_flag (a device
 * int the caller zeroes beforehand) to 1; it is never cleared by the kernel. */
cudaError_t zsq_pack_int4_cuda_launch(const uint8_t* src, uint8_t* dst, int64_t rows, int64_t k,
                                      int is_signed, int* out_of_range_flag, cudaStream_t stream);

/* Unpacks rows x (k + 1) / 2 bytes of `src` into rows x k bytes of `dst`: sign-extended int8
 * when `is_signed`, else uint8 in [0, 15]. */
cudaError_t zsq_unpack_int4_cuda_launch(const uint8_t* src, uint8_t* dst, int64_t rows, int64_t k,
                                        int is_signed, cudaStream_t stream);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* ZSQ_CSRC_CUDA_LAUNCHERS_H_ */
