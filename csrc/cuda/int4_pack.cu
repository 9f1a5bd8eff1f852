// INT4 pack/unpack kernels (torch-free; see launchers.h for the layout and contracts).
//
// One thread per output byte in a grid-stride loop. Packing reads two adjacent input bytes and
// writes one; unpacking has neighbouring threads read the same packed byte, which the L1/L2
// serve, so both are coalesced and purely memory bound.
#include <stdint.h>

#include <cuda_runtime.h>

#include "cuda/launchers.h"

namespace {

constexpr int kThreadsPerBlock = 256;
// Enough blocks to fill any current GPU several times over; the grid-stride loop covers the rest.
constexpr int64_t kMaxBlocks = 65535;

inline unsigned int grid_for(int64_t n_items) {
  int64_t blocks = (n_items + kThreadsPerBlock - 1) / kThreadsPerBlock;
  if (blocks > kMaxBlocks) blocks = kMaxBlocks;
  if (blocks < 1) blocks = 1;
  return static_cast<unsigned int>(blocks);
}

// `bias` maps the valid range onto [0, 15]: 8 for signed bytes, 0 for unsigned.
__global__ void pack_int4_kernel(const uint8_t* __restrict__ src, uint8_t* __restrict__ dst,
                                 int64_t rows, int64_t k, uint8_t bias,
                                 int* __restrict__ out_of_range_flag) {
  const int64_t row_bytes = (k + 1) / 2;
  const int64_t total = rows * row_bytes;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  uint8_t seen = 0;
  for (int64_t out = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; out < total;
       out += stride) {
    const int64_t row = out / row_bytes;
    const int64_t col = 2 * (out - row * row_bytes);
    const uint8_t* row_src = src + row * k;
    const uint8_t lo = row_src[col];
    seen |= static_cast<uint8_t>(lo + bias);
    uint8_t hi = 0;  // odd k: the last byte of a row gets a zero high nibble
    if (col + 1 < k) {
      hi = row_src[col + 1];
      seen |= static_cast<uint8_t>(hi + bias);
    }
    dst[out] = static_cast<uint8_t>((lo & 0x0Fu) | (hi << 4));
  }
  if (seen & 0xF0u) *out_of_range_flag = 1;  // benign race: every writer stores 1
}

template <bool kSigned>
__global__ void unpack_int4_kernel(const uint8_t* __restrict__ src, uint8_t* __restrict__ dst,
                                   int64_t rows, int64_t k) {
  const int64_t row_bytes = (k + 1) / 2;
  const int64_t total = rows * k;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t out = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; out < total;
       out += stride) {
    const int64_t row = out / k;
    const int64_t col = out - row * k;
    const uint8_t byte = src[row * row_bytes + col / 2];
    uint8_t nibble = (col & 1) ? static_cast<uint8_t>(byte >> 4) : static_cast<uint8_t>(byte & 0x0Fu);
    if (kSigned) nibble = static_cast<uint8_t>((nibble ^ 0x08u) - 0x08u);  // sign-extend
    dst[out] = nibble;
  }
}

}  // namespace

extern "C" cudaError_t zsq_pack_int4_cuda_launch(const uint8_t* src, uint8_t* dst, int64_t rows,
                                                 int64_t k, int is_signed,
                                                 int* out_of_range_flag, cudaStream_t stream) {
  if (rows <= 0 || k <= 0) return cudaSuccess;
  const int64_t total = rows * ((k + 1) / 2);
  const uint8_t bias = is_signed ? 8 : 0;
  pack_int4_kernel<<<grid_for(total), kThreadsPerBlock, 0, stream>>>(src, dst, rows, k, bias,
                                                                      out_of_range_flag);
  return cudaGetLastError();
}

extern "C" cudaError_t zsq_unpack_int4_cuda_launch(const uint8_t* src, uint8_t* dst, int64_t rows,
                                                   int64_t k, int is_signed,
                                                   cudaStream_t stream) {
  if (rows <= 0 || k <= 0) return cudaSuccess;
  const int64_t total = rows * k;
  if (is_signed) {
    unpack_int4_kernel<true><<<grid_for(total), kThreadsPerBlock, 0, stream>>>(src, dst, rows, k);
  } else {
    unpack_int4_kernel<false><<<grid_for(total), kThreadsPerBlock, 0, stream>>>(src, dst, rows, k);
  }
  return cudaGetLastError();
}
