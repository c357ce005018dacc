// CUDA version of the fused attention (attention.h; attention.cpp is the reference): the same
// AttentionParams with device pointers, fp32, fp16 or bf16 data, fp32 arithmetic.
//
// First version, written for correctness and small compile time, not peak speed: one warp per
// query row. Each lane holds head_dim / 32 elements of the (pre-scaled) query and of the output
// accumulator; the warp walks the keys one at a time (warp-reduced dot product, online softmax in
// registers), reading K and V rows straight from global memory (coalesced across the lanes; the
// rows the warps of a block share hit L1/L2). Decode (one query per head) is bandwidth-bound and
// fits this shape; prefill would want a tensor-core tiled kernel (flash-attention style) instead.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>

#include "attention.h"

namespace mmedge {
namespace {

constexpr int kWarpsPerBlock = 4;
constexpr int kMaxPerLane = 8;  // head_dim <= 32 * 8 = 256

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) { return x; }
template <>
__device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) x += __shfl_xor_sync(0xffffffffu, x, offset);
  return x;
}

// One warp per query row (b, h, t): out[b][h][t] = softmax(q k^T * scale + mask) v.
template <typename T>
__global__ void __launch_bounds__(32 * kWarpsPerBlock)
    attention_warp_kernel(const AttentionParams p) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= static_cast<int64_t>(p.batch) * p.num_heads * p.q_len) return;  // whole warp
  const int t = static_cast<int>(row % p.q_len);
  const int h = static_cast<int>((row / p.q_len) % p.num_heads);
  const int b = static_cast<int>(row / p.q_len / p.num_heads);
  const int g = h / (p.num_heads / p.num_kv_heads);
  const int D = p.head_dim;

  const T* q = static_cast<const T*>(p.q) + b * p.q_batch_stride + h * p.q_head_stride +
               t * p.q_row_stride;
  const T* k = static_cast<const T*>(p.k) + b * p.k_batch_stride + g * p.k_head_stride;
  const T* v = static_cast<const T*>(p.v) + b * p.v_batch_stride + g * p.v_head_stride;
  const float* mask = p.mask ? p.mask + b * p.m_batch_stride + h * p.m_head_stride +
                                   t * p.m_row_stride
                             : nullptr;

  float qr[kMaxPerLane], acc[kMaxPerLane];
#pragma unroll
  for (int i = 0; i < kMaxPerLane; ++i) {
    const int d = lane + 32 * i;
    qr[i] = d < D ? to_float(q[d]) * p.scale : 0.0f;
    acc[i] = 0.0f;
  }

  int kend = p.kv_len;
  if (p.causal) kend = max(0, min(p.kv_len, t + (p.kv_len - p.q_len) + 1));
  float m = -INFINITY, l = 0.0f;
  for (int j = 0; j < kend; ++j) {
    const T* kj = k + j * p.k_row_stride;
    float s = 0.0f;
#pragma unroll
    for (int i = 0; i < kMaxPerLane; ++i) {
      const int d = lane + 32 * i;
      if (d < D) s += qr[i] * to_float(kj[d]);
    }
    s = warp_sum(s);
    if (mask) s += mask[j];
    if (s == -INFINITY) continue;  // a masked key adds nothing
    const float m_new = fmaxf(m, s);
    const float corr = m == -INFINITY ? 0.0f : expf(m - m_new);
    const float pj = expf(s - m_new);
    l = l * corr + pj;
    m = m_new;
    const T* vj = v + j * p.v_row_stride;
#pragma unroll
    for (int i = 0; i < kMaxPerLane; ++i) {
      const int d = lane + 32 * i;
      if (d < D) acc[i] = acc[i] * corr + pj * to_float(vj[d]);
    }
  }

  T* out = static_cast<T*>(p.out) + b * p.o_batch_stride + h * p.o_head_stride +
           t * p.o_row_stride;
  const float inv = l > 0.0f ? 1.0f / l : 0.0f;  // every key masked: zeros, as on the CPU
#pragma unroll
  for (int i = 0; i < kMaxPerLane; ++i) {
    const int d = lane + 32 * i;
    if (d < D) out[d] = from_float<T>(acc[i] * inv);
  }
}

template <typename T>
cudaError_t launch(const AttentionParams& p, cudaStream_t stream) {
  const int64_t rows = static_cast<int64_t>(p.batch) * p.num_heads * p.q_len;
  const int64_t blocks = (rows + kWarpsPerBlock - 1) / kWarpsPerBlock;
  if (blocks == 0) return cudaSuccess;
  if (blocks > 0x7fffffff) return cudaErrorInvalidConfiguration;
  attention_warp_kernel<T>
      <<<static_cast<unsigned>(blocks), 32 * kWarpsPerBlock, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace

int attention_cuda(const AttentionParams& p, void* stream) noexcept {
  if (p.head_dim < 1 || p.head_dim > 32 * kMaxPerLane || p.num_kv_heads < 1 ||
      p.num_heads % p.num_kv_heads != 0) {
    return cudaErrorInvalidValue;
  }
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  switch (p.dtype) {
    case AttentionDtype::kFloat32: return launch<float>(p, s);
    case AttentionDtype::kFloat16: return launch<__half>(p, s);
    case AttentionDtype::kBFloat16: return launch<__nv_bfloat16>(p, s);
  }
  return cudaErrorInvalidValue;
}

}  // namespace mmedge

namespace mmedge {
namespace {

// Elements from the first to one past the last of a [n0][n1][n2][dim] strided view.
int64_t extent(int64_t n0, int64_t s0, int64_t n1, int64_t s1, int64_t n2, int64_t s2, int64_t dim) {
  return (n0 - 1) * s0 + (n1 - 1) * s1 + (n2 - 1) * s2 + dim;
}

}  // namespace

int attention_cuda_host(const AttentionParams& h) noexcept {
  const size_t item = h.dtype == AttentionDtype::kFloat32 ? 4 : 2;
  const int64_t D = h.head_dim;
  const size_t q_bytes = item * extent(h.batch, h.q_batch_stride, h.num_heads, h.q_head_stride,
                                       h.q_len, h.q_row_stride, D);
  const size_t k_bytes = item * extent(h.batch, h.k_batch_stride, h.num_kv_heads, h.k_head_stride,
                                       h.kv_len, h.k_row_stride, D);
  const size_t v_bytes = item * extent(h.batch, h.v_batch_stride, h.num_kv_heads, h.v_head_stride,
                                       h.kv_len, h.v_row_stride, D);
  const size_t o_bytes = item * extent(h.batch, h.o_batch_stride, h.num_heads, h.o_head_stride,
                                       h.q_len, h.o_row_stride, D);
  const size_t m_bytes = sizeof(float) * extent(h.batch, h.m_batch_stride, h.num_heads,
                                                h.m_head_stride, h.q_len, h.m_row_stride, h.kv_len);
  AttentionParams d = h;
  void* buf[5] = {nullptr, nullptr, nullptr, nullptr, nullptr};
  const void* src[5] = {h.q, h.k, h.v, h.mask, h.out};
  const size_t bytes[5] = {q_bytes, k_bytes, v_bytes, m_bytes, o_bytes};
  cudaError_t err = cudaSuccess;
  for (int i = 0; i < 5 && err == cudaSuccess; ++i) {
    if (!src[i]) continue;
    err = cudaMalloc(&buf[i], bytes[i]);
    if (err == cudaSuccess) err = cudaMemcpy(buf[i], src[i], bytes[i], cudaMemcpyHostToDevice);
  }
  d.q = buf[0], d.k = buf[1], d.v = buf[2], d.mask = static_cast<const float*>(buf[3]);
  d.out = buf[4];
  if (err == cudaSuccess) err = static_cast<cudaError_t>(attention_cuda(d, nullptr));
  if (err == cudaSuccess) err = cudaMemcpy(h.out, buf[4], o_bytes, cudaMemcpyDeviceToHost);
  for (void* b : buf) {
    if (b) cudaFree(b);
  }
  return err;
}

}  // namespace mmedge
