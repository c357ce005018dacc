// Fused scaled-dot-product attention, out = softmax(q k^T * scale + mask) v, computed in tiles with
// an online softmax so the [queries, keys] score matrix never exists in full. Covers what the
// vision tower and the decoder need: non-causal and causal, grouped-query attention (several query
// heads share one key/value head), and decode against a preallocated KV cache (the caller writes
// the new keys and values into the cache, then attends over its first kv_len rows).
//
// Shaped for one call per layer with nothing allocated per call: the caller owns the output and a
// scratch buffer of attention_scratch_floats(p) floats, reused across calls.
//
// attention_cpu (fp32) is the reference; attention_cuda (csrc/cuda/attention.cu) takes the same
// parameters with device pointers and fp32, fp16 or bf16 data.
// Not here: rotary embeddings, projections, writing the cache.
#pragma once

#include <cstdint>

namespace mmedge {

enum class AttentionDtype : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

struct AttentionParams {
  // Queries: q[b][h][t][d] = q[b * q_batch_stride + h * q_head_stride + t * q_row_stride + d]
  // for b < batch, h < num_heads, t < q_len, d < head_dim.
  const void* q = nullptr;
  int64_t q_batch_stride = 0, q_head_stride = 0, q_row_stride = 0;
  // Keys and values (a KV cache): k[b][g][j][d] = k[b * k_batch_stride + g * k_head_stride +
  // j * k_row_stride + d] for g < num_kv_heads, j < kv_len; the same for v with v_* strides.
  const void* k = nullptr;
  int64_t k_batch_stride = 0, k_head_stride = 0, k_row_stride = 0;
  const void* v = nullptr;
  int64_t v_batch_stride = 0, v_head_stride = 0, v_row_stride = 0;
  // Output, laid out like q: out[b][h][t][d] = out[b * o_batch_stride + h * o_head_stride +
  // t * o_row_stride + d].
  void* out = nullptr;
  int64_t o_batch_stride = 0, o_head_stride = 0, o_row_stride = 0;
  // Optional additive float32 mask, added to the scaled scores (-inf masks a key):
  // mask[b][h][t][j] = mask[b * m_batch_stride + h * m_head_stride + t * m_row_stride + j];
  // a stride of 0 broadcasts that axis. Null for none.
  const float* mask = nullptr;
  int64_t m_batch_stride = 0, m_head_stride = 0, m_row_stride = 0;

  int batch = 0;
  int num_heads = 0;     // query heads
  int num_kv_heads = 0;  // divides num_heads; query head h reads kv head h / (num_heads / num_kv_heads)
  int q_len = 0;
  int kv_len = 0;        // keys attended to (cache rows [0, kv_len))
  int head_dim = 0;
  float scale = 1.0f;    // usually 1 / sqrt(head_dim)
  // Causal: query t sits at position kv_len - q_len + t (the queries are the last q_len positions)
  // and sees keys j <= that position. With q_len == kv_len this is the usual lower triangle.
  bool causal = false;
  AttentionDtype dtype = AttentionDtype::kFloat32;  // of q, k, v and out; the CPU takes float32 only

  // CPU: caller-provided working memory of attention_scratch_floats(*this) floats (64-byte
  // alignment is best); CUDA: unused.
  float* scratch = nullptr;
  int num_threads = 0;  // CPU threads; 0: OpenMP's default, fewer for small work (decode steps)
};

// A query row whose keys are all masked (every score -inf) gets an output of zeros.

// Floats of scratch attention_cpu needs for these shapes and num_threads.
int64_t attention_scratch_floats(const AttentionParams& p) noexcept;

// The CPU reference, float32. Trusts its parameters (the bindings check them); allocates nothing.
void attention_cpu(const AttentionParams& p) noexcept;

// The same on a CUDA device (device pointers; queued on `stream`, a cudaStream_t, null for the
// default stream; not synchronized). head_dim <= 256. Returns 0 or a cudaError_t. Only in builds
// with MMEDGE_WITH_CUDA.
int attention_cuda(const AttentionParams& p, void* stream) noexcept;

// Test path for attention_cuda on host memory: copies q, k, v, mask and out to the device, runs,
// copies out back and synchronizes. Returns 0 or a cudaError_t. Only with MMEDGE_WITH_CUDA.
int attention_cuda_host(const AttentionParams& host_params) noexcept;

}  // namespace mmedge
