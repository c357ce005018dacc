// CPU reference of the fused attention (see attention.h), float32.
//
// One work item is (batch, kv head, block of queries): the rows of every query head sharing that
// kv head (grouped-query attention) are processed together, so each key and value block is read
// once per group. For each block of kBlockKeys keys: scores = (scale * Q) K^T, mask and causal
// limit, online-softmax update of each query's running max m and sum l (the accumulator is
// rescaled when the max grows), then O += P V. At the end out = O / l.
// Two layouts of the same steps. With many rows (prefill) everything is kept transposed, queries
// along the SIMD vectors: St = K_tile Qt and Ot += V_tile^T St are plain GEMMs reading K and V
// where they lie, and the softmax runs down the columns (cpu::softmax_cols). With few rows
// (decode: one query per head) each score is a dot product straight from the cache.
// Threads take work items dynamically; each has its own slice of the caller's scratch.
#include "attention.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "cpu_simd.h"

namespace mmedge {
namespace {

constexpr int kBlockKeys = 128;   // keys per tile: a 128 x 64 fp32 K or V tile is 32 KiB
constexpr int kTargetRows = 64;   // query rows (all heads of a group together) per work item
constexpr int kColumnRows = 16;   // from this many rows, the transposed ("column") layout
constexpr double kMinFlopsPerThread = 16e6;  // about half a millisecond of one core's work
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

int64_t round16(int64_t n) { return (n + 15) / 16 * 16; }

struct Plan {
  int group;      // query heads per kv head
  int q_block;    // queries per work item, per head
  int rows;       // group * q_block: the most rows in one work item
  int64_t items;  // batch * num_kv_heads * ceil(q_len / q_block)
  int scratch_threads;  // threads the scratch is sized for: the most that can run
  int threads;          // threads this call runs: fewer for small work when num_threads is 0
  int64_t per_thread;   // scratch floats per thread
};

Plan plan(const AttentionParams& p) {
  Plan pl{};
  pl.group = p.num_kv_heads > 0 ? p.num_heads / p.num_kv_heads : 1;
  pl.q_block = std::max(1, std::min(p.q_len, kTargetRows / std::max(1, pl.group)));
  pl.rows = pl.group * pl.q_block;
  const int64_t q_blocks = p.q_len > 0 ? (p.q_len + pl.q_block - 1) / pl.q_block : 0;
  pl.items = static_cast<int64_t>(p.batch) * p.num_kv_heads * q_blocks;
  int threads = p.num_threads;
#ifdef _OPENMP
  if (threads <= 0) threads = omp_get_max_threads();
#endif
  pl.scratch_threads =
      static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(threads, pl.items)));
  pl.threads = pl.scratch_threads;
  if (p.num_threads <= 0) {
    // Automatic: at least kMinFlopsPerThread of work per thread; waking threads for a short decode
    // step costs more than it saves (and far more on a machine whose cores are busy).
    const double flops = 4.0 * p.batch * p.num_heads * p.q_len * p.kv_len * p.head_dim;
    const int64_t useful = static_cast<int64_t>(flops / kMinFlopsPerThread) + 1;
    pl.threads = static_cast<int>(std::min<int64_t>(pl.threads, useful));
  }
  // Q and O (either layout), the score tile, m, l and corr.
  const int64_t rs = round16(pl.rows);
  pl.per_thread = 2 * round16(rs * p.head_dim) + round16(rs * kBlockKeys) + 3 * rs;
  return pl;
}

}  // namespace

int64_t attention_scratch_floats(const AttentionParams& p) noexcept {
  const Plan pl = plan(p);
  return pl.per_thread * pl.scratch_threads;
}

void attention_cpu(const AttentionParams& p) noexcept {
  const Plan pl = plan(p);
  if (pl.items == 0) return;
  const int D = p.head_dim;
  const int G = pl.group;
  const int64_t q_blocks = (p.q_len + pl.q_block - 1) / pl.q_block;
  const float* qbase = static_cast<const float*>(p.q);
  const float* kbase = static_cast<const float*>(p.k);
  const float* vbase = static_cast<const float*>(p.v);
  float* obase = static_cast<float*>(p.out);
  const int causal_shift = p.kv_len - p.q_len;  // query t sits at position t + causal_shift
  const int64_t rs = round16(pl.rows);

#ifdef _OPENMP
#pragma omp parallel num_threads(pl.threads)
#endif
  {
    int tid = 0;
#ifdef _OPENMP
    tid = omp_get_thread_num();
#endif
    float* const Q = p.scratch + tid * pl.per_thread;  // Qt [D][Rs] or Qs [R][D], scaled
    float* const O = Q + round16(rs * D);               // Ot [D][Rs] or O [R][D]
    float* const S = O + round16(rs * D);               // St [keys][Rs] or S [R][kBlockKeys]
    float* const m = S + round16(rs * kBlockKeys);
    float* const l = m + rs;
    float* const corr = l + rs;

#ifdef _OPENMP
#pragma omp for schedule(dynamic, 1)
#endif
    for (int64_t item = 0; item < pl.items; ++item) {
      const int64_t qb = item % q_blocks;
      const int g = static_cast<int>((item / q_blocks) % p.num_kv_heads);
      const int b = static_cast<int>(item / q_blocks / p.num_kv_heads);
      const int t0 = static_cast<int>(qb * pl.q_block);
      const int nq = std::min(pl.q_block, p.q_len - t0);
      const int R = G * nq;  // row r is query head g * G + r / nq, query t0 + r % nq
      // Column layout: queries along the vectors (scores St[j][r], Ot[d][r]); for few rows
      // (decode) the row layout: dot products of each query with the cached keys.
      const bool columns = R >= kColumnRows;
      const int Rs = static_cast<int>(round16(R));  // columns, padded with zero queries

      for (int r = 0; r < R; ++r) {
        const int h = g * G + r / nq, t = t0 + r % nq;
        const float* q = qbase + b * p.q_batch_stride + h * p.q_head_stride + t * p.q_row_stride;
        for (int d = 0; d < D; ++d) {
          if (columns) Q[static_cast<int64_t>(d) * Rs + r] = q[d] * p.scale;
          else Q[static_cast<int64_t>(r) * D + d] = q[d] * p.scale;
        }
      }
      if (columns) {
        for (int d = 0; d < D; ++d)
          for (int r = R; r < Rs; ++r) Q[static_cast<int64_t>(d) * Rs + r] = 0.0f;
      }
      const int cols = columns ? Rs : R;
      for (int r = 0; r < cols; ++r) {
        m[r] = kNegInf;
        l[r] = 0.0f;
      }
      std::memset(O, 0, sizeof(float) * cols * D);

      const float* kp = kbase + b * p.k_batch_stride + g * p.k_head_stride;
      const float* vp = vbase + b * p.v_batch_stride + g * p.v_head_stride;
      int kend = p.kv_len;
      if (p.causal) kend = std::max(0, std::min(p.kv_len, t0 + nq - 1 + causal_shift + 1));

      for (int j0 = 0; j0 < kend; j0 += kBlockKeys) {
        const int nb = std::min(kBlockKeys, kend - j0);
        const float* kt = kp + j0 * p.k_row_stride;
        const float* vt = vp + j0 * p.v_row_stride;
        if (columns) {
          // St = K_tile Qt: [nb][Rs], vectors along the queries.
          std::memset(S, 0, sizeof(float) * nb * Rs);
          cpu::gemm_ab_acc(nb, Rs, D, kt, p.k_row_stride, Q, Rs, S, Rs);
          for (int r = 0; r < R; ++r) {
            const int h = g * G + r / nq, t = t0 + r % nq;
            if (p.mask) {
              const float* mk = p.mask + b * p.m_batch_stride + h * p.m_head_stride +
                                t * p.m_row_stride + j0;
              for (int j = 0; j < nb; ++j) S[static_cast<int64_t>(j) * Rs + r] += mk[j];
            }
            if (p.causal) {
              for (int j = std::max(0, t + causal_shift + 1 - j0); j < nb; ++j)
                S[static_cast<int64_t>(j) * Rs + r] = kNegInf;
            }
          }
          cpu::softmax_cols(S, Rs, nb, Rs, m, l, corr);
          for (int d = 0; d < D; ++d) {
            float* o = O + static_cast<int64_t>(d) * Rs;
            for (int r = 0; r < Rs; ++r) o[r] *= corr[r];
          }
          // Ot += V_tile^T St: Ot[d][r] += sum_j V[j][d] St[j][r].
          cpu::gemm_ab_acc(D, Rs, nb, vt, 1, S, Rs, O, Rs, p.v_row_stride);
          continue;
        }
        // Row layout: S[r][j] = q_r . k_j, then a softmax step per row, then O += P V.
        cpu::gemm_abt(R, nb, D, 1.0f, Q, D, kt, p.k_row_stride, S, kBlockKeys);
        for (int r = 0; r < R; ++r) {
          const int h = g * G + r / nq, t = t0 + r % nq;
          float* s = S + static_cast<int64_t>(r) * kBlockKeys;
          if (p.mask) {
            const float* mk = p.mask + b * p.m_batch_stride + h * p.m_head_stride +
                              t * p.m_row_stride + j0;
            for (int j = 0; j < nb; ++j) s[j] += mk[j];
          }
          if (p.causal) {
            for (int j = std::max(0, t + causal_shift + 1 - j0); j < nb; ++j) s[j] = kNegInf;
          }
          const float m_new = std::max(m[r], cpu::max_of(s, nb));
          if (m_new == kNegInf) {  // every key so far masked: nothing to add
            std::memset(s, 0, sizeof(float) * nb);
            continue;
          }
          const float c = m[r] == kNegInf ? 0.0f : std::exp(m[r] - m_new);
          const float sum = cpu::exp_shift_sum(s, nb, m_new);
          l[r] = l[r] * c + sum;
          if (c != 1.0f) {
            float* o = O + static_cast<int64_t>(r) * D;
            for (int d = 0; d < D; ++d) o[d] *= c;
          }
          m[r] = m_new;
        }
        cpu::gemm_ab_acc(R, D, nb, S, kBlockKeys, vt, p.v_row_stride, O, D);
      }

      for (int r = 0; r < R; ++r) {
        const int h = g * G + r / nq, t = t0 + r % nq;
        float* out = obase + b * p.o_batch_stride + h * p.o_head_stride + t * p.o_row_stride;
        const float inv = l[r] > 0.0f ? 1.0f / l[r] : 0.0f;  // all keys masked: zeros
        for (int d = 0; d < D; ++d) {
          const float o = columns ? O[static_cast<int64_t>(d) * Rs + r] : O[static_cast<int64_t>(r) * D + d];
          out[d] = o * inv;
        }
      }
    }
  }
}

}  // namespace mmedge
