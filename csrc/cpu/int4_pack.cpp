// INT4 pack/unpack on the CPU; layout documented in int4_pack.h.
//
// Every loop works on bytes (int8 input is reinterpreted as uint8, which the aliasing rules
// allow), stays branch-free and uses unit or stride-2 accesses so that -O3 vectorises it for
// the baseline ISA. The range check is an OR-reduction fused into the packing loop instead of a
// separate pass over the input.
#include "cpu/int4_pack.h"
#include "cpu/threading.h"

#include <algorithm>

namespace zsq {
namespace cpu {
namespace {

// Below this many output bytes the OpenMP fork/join costs more than it saves.
constexpr int64_t kParallelMinBytes = int64_t{1} << 18;
// Work unit for the flat (even k) path: large enough to amortise scheduling, small enough to
// balance a few cores.
constexpr int64_t kBlockBytes = int64_t{1} << 15;

// kBias maps the valid input range onto [0, 15]: 8 for signed ([-8, 7] as two's-complement
// bytes), 0 for unsigned. A value is in range iff (byte + kBias) mod 256 has no high bits set.
template <uint8_t kBias>
inline uint8_t pack_pairs(const uint8_t* __restrict src, uint8_t* __restrict dst,
                          int64_t n_pairs) {
  uint8_t seen = 0;
  for (int64_t i = 0; i < n_pairs; ++i) {
    const uint8_t lo = src[2 * i];
    const uint8_t hi = src[2 * i + 1];
    seen |= static_cast<uint8_t>(lo + kBias) | static_cast<uint8_t>(hi + kBias);
    dst[i] = static_cast<uint8_t>((lo & 0x0F) | (hi << 4));
  }
  return seen;
}

template <uint8_t kBias>
bool pack_impl(const uint8_t* src, uint8_t* dst, int64_t rows, int64_t k, int num_threads) {
  if (rows <= 0 || k <= 0) return true;
  const int64_t row_bytes = (k + 1) / 2;
  const int64_t total_bytes = rows * row_bytes;
  const int threads = resolve_threads(num_threads);
  uint8_t seen = 0;

  if (k % 2 == 0) {
    // Rows are contiguous and no byte straddles a row boundary: pack the flat buffer, which
    // also parallelises a single very long row.
    const int64_t n_blocks = (total_bytes + kBlockBytes - 1) / kBlockBytes;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) reduction(| : seen) num_threads(threads) \
    if (total_bytes >= kParallelMinBytes && threads > 1)
#endif
    for (int64_t b = 0; b < n_blocks; ++b) {
      const int64_t begin = b * kBlockBytes;
      const int64_t count = std::min(kBlockBytes, total_bytes - begin);
      seen |= pack_pairs<kBias>(src + 2 * begin, dst + begin, count);
    }
  } else {
    const int64_t full_pairs = k / 2;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) reduction(| : seen) num_threads(threads) \
    if (total_bytes >= kParallelMinBytes && threads > 1)
#endif
    for (int64_t r = 0; r < rows; ++r) {
      const uint8_t* row_src = src + r * k;
      uint8_t* row_dst = dst + r * row_bytes;
      uint8_t row_seen = pack_pairs<kBias>(row_src, row_dst, full_pairs);
      const uint8_t last = row_src[k - 1];
      row_seen |= static_cast<uint8_t>(last + kBias);
      row_dst[full_pairs] = static_cast<uint8_t>(last & 0x0F);  // zero padding nibble
      seen |= row_seen;
    }
  }
  return (seen & 0xF0) == 0;
}

// Nibble -> output byte. Signed: ((n ^ 8) - 8) sign-extends a 4-bit two's-complement value
// without branches or signed shifts.
template <bool kSigned>
inline uint8_t widen(uint8_t nibble) {
  if (kSigned) return static_cast<uint8_t>((nibble ^ 0x08) - 0x08);
  return nibble;
}

template <bool kSigned>
inline void unpack_pairs(const uint8_t* __restrict src, uint8_t* __restrict dst,
                         int64_t n_pairs) {
  for (int64_t i = 0; i < n_pairs; ++i) {
    const uint8_t byte = src[i];
    dst[2 * i] = widen<kSigned>(byte & 0x0F);
    dst[2 * i + 1] = widen<kSigned>(byte >> 4);
  }
}

template <bool kSigned>
void unpack_impl(const uint8_t* src, uint8_t* dst, int64_t rows, int64_t k, int num_threads) {
  if (rows <= 0 || k <= 0) return;
  const int64_t row_bytes = (k + 1) / 2;
  const int64_t total_bytes = rows * row_bytes;
  const int threads = resolve_threads(num_threads);

  if (k % 2 == 0) {
    const int64_t n_blocks = (total_bytes + kBlockBytes - 1) / kBlockBytes;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(threads) \
    if (total_bytes >= kParallelMinBytes && threads > 1)
#endif
    for (int64_t b = 0; b < n_blocks; ++b) {
      const int64_t begin = b * kBlockBytes;
      const int64_t count = std::min(kBlockBytes, total_bytes - begin);
      unpack_pairs<kSigned>(src + begin, dst + 2 * begin, count);
    }
  } else {
    const int64_t full_pairs = k / 2;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(threads) \
    if (total_bytes >= kParallelMinBytes && threads > 1)
#endif
    for (int64_t r = 0; r < rows; ++r) {
      const uint8_t* row_src = src + r * row_bytes;
      uint8_t* row_dst = dst + r * k;
      unpack_pairs<kSigned>(row_src, row_dst, full_pairs);
      row_dst[k - 1] = widen<kSigned>(row_src[full_pairs] & 0x0F);
    }
  }
}

}  // namespace

bool pack_int4_signed(const int8_t* src, uint8_t* dst, int64_t rows, int64_t k, int num_threads) {
  return pack_impl<8>(reinterpret_cast<const uint8_t*>(src), dst, rows, k, num_threads);
}

bool pack_int4_unsigned(const uint8_t* src, uint8_t* dst, int64_t rows, int64_t k,
                        int num_threads) {
  return pack_impl<0>(src, dst, rows, k, num_threads);
}

void unpack_int4_signed(const uint8_t* src, int8_t* dst, int64_t rows, int64_t k,
                        int num_threads) {
  unpack_impl<true>(src, reinterpret_cast<uint8_t*>(dst), rows, k, num_threads);
}

void unpack_int4_unsigned(const uint8_t* src, uint8_t* dst, int64_t rows, int64_t k,
                          int num_threads) {
  unpack_impl<false>(src, dst, rows, k, num_threads);
}

}  // namespace cpu
}  // namespace zsq
