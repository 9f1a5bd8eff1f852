/* Torch-free launchers of the CUDA kernels in the csrc/cuda/ sources.
 *
 * The .cu files include only CUDA headers (the CPU build of torch ships incomplete CUDA
 * headers), so each kernel is reached through a plain C function taking raw device pointers,
 * sizes and a stream. csrc/bind/<family>.cpp checks the tensors, takes the current stream from torch
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

/* ------------------------------------------------------------------ integer conv (int8) */

/* Output / residual storage codes of the integer epilogue (the CPU kernels' OutKind). */
enum {
  ZSQ_INT_OUT_INT32 = 0,
  ZSQ_INT_OUT_FLOAT32 = 1,
  ZSQ_INT_OUT_FLOAT16 = 2,
  ZSQ_INT_OUT_BFLOAT16 = 3,
  ZSQ_INT_OUT_INT8 = 4,
  ZSQ_INT_OUT_UINT8 = 5
};
enum { ZSQ_INT_ACT_NONE = 0, ZSQ_INT_ACT_RELU = 1, ZSQ_INT_ACT_RELU6 = 2 };

/* The fused epilogue of zsq_engine/opspec/epilogue.py for an [M, N] output (M rows = output
 * pixels, N = channels); device pointers, null when the option is off. out_kind INT32 keeps the
 * zero-point-corrected accumulator and ignores everything after weight_zero_point. */
typedef struct ZsqIntEpilogueCuda {
  int32_t act_zero_point;
  const int32_t* weight_zero_point; /* [N] or [1]; null: 0 */
  int wzp_per_channel;
  const float* weight_scale; /* [N] or [1] */
  int wscale_per_channel;
  const float* act_scale; /* [M] or [1] */
  int ascale_per_row;
  const float* bias;    /* [N] */
  const void* residual; /* [M, N], stored as residual_kind (FLOAT32/16/BFLOAT16/INT8/UINT8) */
  int residual_kind;
  float residual_scale;
  int32_t residual_zero_point;
  int activation; /* ZSQ_INT_ACT_* */
  int out_kind;   /* ZSQ_INT_OUT_* */
  float out_scale;
  int32_t out_zero_point;
  int32_t quant_min;
  int32_t quant_max;
} ZsqIntEpilogueCuda;

/* NHWC conv geometry: input [batch, h, w, c], kernel kh x kw, output [batch, oh, ow, c]. */
typedef struct ZsqConvGeometry {
  int64_t batch, h, w, c;
  int64_t kh, kw, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w;
  int64_t oh, ow;
} ZsqConvGeometry;

/* Re-lays a depthwise weight for the dp4a conv: `w` is int8 [channels, taps] (taps = kh * kw,
 * row-major), or with `w_int4` packed signed int4 [channels, (taps + 1) / 2] (the layout above).
 * Writes words int32 [(taps + 3) / 4, channels] (word g of channel c holds taps 4g..4g+3 as
 * int8 bytes, low byte first, zero past the last tap) and wsum int32 [channels] = sum of the
 * channel's taps. */
cudaError_t zsq_depthwise_weight_relayout_cuda_launch(const uint8_t* w, int64_t channels,
                                                      int64_t taps, int w_int4, int32_t* words,
                                                      int32_t* wsum, cudaStream_t stream);

/* Depthwise conv (groups == C == output channels) in NHWC: x int8 (`x_signed`) or uint8
 * [batch, h, w, c] contiguous; out-of-image taps read pad_value (in x's type); words / wsum from
 * zsq_depthwise_weight_relayout_cuda_launch. out [batch, oh, ow, c] of the epilogue's out_kind
 * = epilogue(sum_taps (x - za)(w - zw)). Exact int32 accumulation with __dp4a (sm_61+). */
cudaError_t zsq_depthwise_conv2d_dp4a_cuda_launch(const uint8_t* x, int x_signed,
                                                  const ZsqConvGeometry* geometry,
                                                  int32_t pad_value, const int32_t* words,
                                                  const int32_t* wsum,
                                                  const ZsqIntEpilogueCuda* epilogue, void* out,
                                                  cudaStream_t stream);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* ZSQ_CSRC_CUDA_LAUNCHERS_H_ */
