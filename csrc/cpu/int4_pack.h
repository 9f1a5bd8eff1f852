// INT4 packing on the CPU (torch-free: raw pointers and sizes; csrc/bind/int4_pack.cpp wraps them).
//
// Layout, shared with the CUDA and Triton kernels: a row of k int4 values becomes
// (k + 1) / 2 bytes; element 2i goes to the LOW nibble (bits 0-3) of byte i and element 2i+1
// to the HIGH nibble (bits 4-7). Signed values are stored as two's-complement nibbles. An odd
// k is padded with a zero high nibble in the last byte of every row.
#pragma once

#include <cstdint>

namespace zsq {
namespace cpu {

// Packs `rows` rows of `k` values from `src` (row-major, contiguous) into `dst`
// (rows x (k + 1) / 2 bytes). Returns false if any value is outside [-8, 7] (signed) or
// [0, 15] (unsigned); the range check is fused into the packing loop, so on false the content
// of `dst` is unspecified. `num_threads` <= 0 means the OpenMP default.
bool pack_int4_signed(const int8_t* src, uint8_t* dst, int64_t rows, int64_t k, int num_threads);
bool pack_int4_unsigned(const uint8_t* src, uint8_t* dst, int64_t rows, int64_t k,
                        int num_threads);

// Inverse of the above: `src` holds rows x (k + 1) / 2 bytes, `dst` receives rows x k values
// (sign-extended for the signed variant). The padding nibble of an odd k is ignored.
void unpack_int4_signed(const uint8_t* src, int8_t* dst, int64_t rows, int64_t k,
                        int num_threads);
void unpack_int4_unsigned(const uint8_t* src, uint8_t* dst, int64_t rows, int64_t k,
                          int num_threads);

}  // namespace cpu
}  // namespace zsq
