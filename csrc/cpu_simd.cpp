// The dense loops of the CPU kernels (declared in cpu_simd.h), written once with GCC/Clang vector
// extensions and instantiated for AVX-512, AVX2+FMA and the baseline ISA (SSE2 on x86-64, NEON on
// aarch64). The variant is chosen once, at first use, from what the CPU reports.
//
// fp-contract=fast lets a*b+c become one FMA where the target has it; everything in this file is
// a kernel inner loop where that is wanted (the PIL coefficients, which must not be contracted,
// live in patch_embed.cpp).
#pragma GCC optimize("fp-contract=fast")
#pragma GCC diagnostic ignored "-Wpsabi"  // vector types never cross a non-inlined call

#include "cpu_simd.h"

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <utility>

#define MMEDGE_INLINE inline __attribute__((always_inline))

namespace mmedge::cpu {
namespace {

template <int W>
struct Vec {
  typedef float F __attribute__((vector_size(4 * W)));
  typedef int32_t I __attribute__((vector_size(4 * W)));
};

template <int W>
MMEDGE_INLINE typename Vec<W>::F load(const float* p) {
  typename Vec<W>::F v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

template <int W>
MMEDGE_INLINE void store(float* p, typename Vec<W>::F v) {
  std::memcpy(p, &v, sizeof(v));
}

template <int W>
MMEDGE_INLINE float hsum(typename Vec<W>::F v) {
  float s = 0.0f;
  for (int l = 0; l < W; ++l) s += v[l];
  return s;
}

// One MR x NR block of C = alpha * A B^T: MR*NR vector accumulators over k, then a scalar tail.
template <int W, int MR, int NR>
MMEDGE_INLINE void abt_block(int K, float alpha, const float* A, int64_t lda, const float* B,
                             int64_t ldb, float* C, int64_t ldc) {
  using F = typename Vec<W>::F;
  F acc[MR][NR];
  for (int r = 0; r < MR; ++r)
    for (int c = 0; c < NR; ++c) acc[r][c] = F{};
  int k = 0;
  for (; k + W <= K; k += W) {
    F a[MR], b[NR];
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) a[r] = load<W>(A + r * lda + k);
#pragma GCC unroll 8
    for (int c = 0; c < NR; ++c) b[c] = load<W>(B + c * ldb + k);
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r)
#pragma GCC unroll 8
      for (int c = 0; c < NR; ++c) acc[r][c] += a[r] * b[c];
  }
  for (int r = 0; r < MR; ++r) {
    for (int c = 0; c < NR; ++c) {
      float s = hsum<W>(acc[r][c]);
      for (int kk = k; kk < K; ++kk) s += A[r * lda + kk] * B[c * ldb + kk];
      C[r * ldc + c] = alpha * s;
    }
  }
}

template <int W, int MR, int NR>
MMEDGE_INLINE void gemm_abt_t(int M, int N, int K, float alpha, const float* A, int64_t lda,
                              const float* B, int64_t ldb, float* C, int64_t ldc) {
  int i = 0;
  for (; i + MR <= M; i += MR) {
    int j = 0;
    for (; j + NR <= N; j += NR)
      abt_block<W, MR, NR>(K, alpha, A + i * lda, lda, B + j * ldb, ldb, C + i * ldc + j, ldc);
    for (; j < N; ++j)
      abt_block<W, MR, 1>(K, alpha, A + i * lda, lda, B + j * ldb, ldb, C + i * ldc + j, ldc);
  }
  for (; i < M; ++i) {
    int j = 0;
    for (; j + NR <= N; j += NR)
      abt_block<W, 1, NR>(K, alpha, A + i * lda, lda, B + j * ldb, ldb, C + i * ldc + j, ldc);
    for (; j < N; ++j)
      abt_block<W, 1, 1>(K, alpha, A + i * lda, lda, B + j * ldb, ldb, C + i * ldc + j, ldc);
  }
}

// MR rows of C += A B over NV vectors of columns, the accumulators held in registers across k.
// A[r][k] = A[r * lda + k * ska].
template <int W, int MR, int NV>
MMEDGE_INLINE void ab_block(int K, const float* A, int64_t lda, int64_t ska, const float* B,
                            int64_t ldb, float* C, int64_t ldc) {
  using F = typename Vec<W>::F;
  F acc[MR][NV];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) acc[r][v] = load<W>(C + r * ldc + v * W);
  for (int k = 0; k < K; ++k) {
    F b[NV];
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) b[v] = load<W>(B + k * ldb + v * W);
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const float a = A[r * lda + k * ska];
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) acc[r][v] += a * b[v];
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) store<W>(C + r * ldc + v * W, acc[r][v]);
}

template <int W, int MR>
MMEDGE_INLINE void ab_rows(int N, int K, const float* A, int64_t lda, int64_t ska, const float* B,
                           int64_t ldb, float* C, int64_t ldc) {
  int j = 0;
  for (; j + 4 * W <= N; j += 4 * W) ab_block<W, MR, 4>(K, A, lda, ska, B + j, ldb, C + j, ldc);
  if (j + 3 * W <= N) {
    ab_block<W, MR, 3>(K, A, lda, ska, B + j, ldb, C + j, ldc);
    j += 3 * W;
  } else if (j + 2 * W <= N) {
    ab_block<W, MR, 2>(K, A, lda, ska, B + j, ldb, C + j, ldc);
    j += 2 * W;
  }
  for (; j + W <= N; j += W) ab_block<W, MR, 1>(K, A, lda, ska, B + j, ldb, C + j, ldc);
  for (; j < N; ++j) {
    for (int r = 0; r < MR; ++r) {
      float s = C[r * ldc + j];
      for (int k = 0; k < K; ++k) s += A[r * lda + k * ska] * B[k * ldb + j];
      C[r * ldc + j] = s;
    }
  }
}

// Rows in blocks of MR, the remainder in blocks of 4, 2, 1 (a 1-row block is 4x slower per row).
template <int W, int MR>
MMEDGE_INLINE void gemm_ab_acc_t(int M, int N, int K, const float* A, int64_t lda, int64_t ska,
                                 const float* B, int64_t ldb, float* C, int64_t ldc) {
  int i = 0;
  for (; i + MR <= M; i += MR)
    ab_rows<W, MR>(N, K, A + i * lda, lda, ska, B, ldb, C + i * ldc, ldc);
  if (MR > 4 && i + 4 <= M) {
    ab_rows<W, 4>(N, K, A + i * lda, lda, ska, B, ldb, C + i * ldc, ldc);
    i += 4;
  }
  if (MR > 2 && i + 2 <= M) {
    ab_rows<W, 2>(N, K, A + i * lda, lda, ska, B, ldb, C + i * ldc, ldc);
    i += 2;
  }
  for (; i < M; ++i) ab_rows<W, 1>(N, K, A + i * lda, lda, ska, B, ldb, C + i * ldc, ldc);
}

template <int W>
MMEDGE_INLINE float max_of_t(const float* x, int n) {
  using F = typename Vec<W>::F;
  float m = -std::numeric_limits<float>::infinity();
  int i = 0;
  if (n >= W) {
    F mv = load<W>(x);
    for (i = W; i + W <= n; i += W) {
      const F v = load<W>(x + i);
      mv = v > mv ? v : mv;
    }
    for (int l = 0; l < W; ++l) m = mv[l] > m ? mv[l] : m;
  }
  for (; i < n; ++i) m = x[i] > m ? x[i] : m;
  return m;
}

// exp(x) for x <= ~88: 2^n * p(r), r = x - n ln2 (Cephes expf); x < -87 gives 0 (exp(-inf) = 0).
template <int W>
MMEDGE_INLINE typename Vec<W>::F vexp(typename Vec<W>::F x) {
  using F = typename Vec<W>::F;
  using I = typename Vec<W>::I;
  const F lo = F{} - 87.0f;
  const F zero = F{};
  const F xc = x < lo ? lo : x;
  const F magic = F{} + 12582912.0f;  // 1.5 * 2^23: (t + magic) - magic rounds t to an integer
  const F n = (xc * 1.44269504088896341f + magic) - magic;
  const F r = (xc - n * 0.693359375f) - n * -2.12194440e-4f;
  F p = F{} + 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const F y = p * r * r + r + 1.0f;
  const I bits = (__builtin_convertvector(n, I) + 127) << 23;
  const F scale = (F)bits;  // reinterpret the bits
  const F result = y * scale;
  return x < lo ? zero : result;
}

template <int W>
MMEDGE_INLINE float exp_shift_sum_t(float* x, int n, float shift) {
  using F = typename Vec<W>::F;
  F acc = F{};
  int i = 0;
  for (; i + W <= n; i += W) {
    const F e = vexp<W>(load<W>(x + i) - shift);
    store<W>(x + i, e);
    acc += e;
  }
  float s = hsum<W>(acc);
  if (i < n) {
    float tail[W];
    for (int l = 0; l < W; ++l) tail[l] = i + l < n ? x[i + l] - shift : -INFINITY;
    const F e = vexp<W>(load<W>(tail));
    for (int l = 0; i + l < n; ++l) {
      x[i + l] = e[l];
      s += e[l];
    }
  }
  return s;
}

// -- Pillow's 8-bit resampling -------------------------------------------------------------------

template <int W>
struct Bytes {
  typedef uint8_t U __attribute__((vector_size(W)));
};

template <int W>
MMEDGE_INLINE typename Vec<W>::I widen(const uint8_t* p) {  // W bytes -> W int32
  typedef uint16_t Halves __attribute__((vector_size(2 * W)));
  typename Bytes<W>::U v;
  std::memcpy(&v, p, sizeof(v));
  // Through 16 bits: GCC 12 turns each doubling into vpmovzx, but u8 -> i32 in one step into a
  // byte-by-byte insert sequence (measured: the horizontal pass ran 3-4x slower).
  return __builtin_convertvector(__builtin_convertvector(v, Halves), typename Vec<W>::I);
}

template <int W>
MMEDGE_INLINE typename Vec<W>::I clip8(typename Vec<W>::I acc) {  // Pillow's clip8
  using I = typename Vec<W>::I;
  acc >>= kPillowPrecisionBits;
  acc = acc < 0 ? I{} : acc;
  return acc > 255 ? I{} + 255 : acc;
}

// Byte transposes for the horizontal pass: W rows of 16 bytes become 16 columns of W bytes, by
// log2(W) rounds of interleaving units of 1, 2, 4, 8 bytes (punpckl/h on x86, zip on NEON).
typedef uint8_t Bytes16 __attribute__((vector_size(16)));

// The low (or high) 8 bytes of a and b, alternating in units of U bytes: a0 b0 a1 b1 ... Output
// byte i comes from a (i / U even) or b, unit i / 2U of the half, byte i % U of the unit.
template <int U, bool HIGH, size_t... I>
MMEDGE_INLINE Bytes16 interleave(Bytes16 a, Bytes16 b, std::index_sequence<I...>) {
  // Clang has only __builtin_shufflevector, GCC < 12 (JetPack 6's GCC 11) only __builtin_shuffle.
#if defined(__clang__)
  return __builtin_shufflevector(a, b, ((I / U) % 2 * 16 + (HIGH ? 8 : 0) + I / (2 * U) * U + I % U)...);
#else
  return __builtin_shuffle(
      a, b, Bytes16{static_cast<uint8_t>((I / U) % 2 * 16 + (HIGH ? 8 : 0) + I / (2 * U) * U + I % U)...});
#endif
}

template <int U, bool HIGH>
MMEDGE_INLINE Bytes16 interleave(Bytes16 a, Bytes16 b) {
  return interleave<U, HIGH>(a, b, std::make_index_sequence<16>{});
}

// One round: before it x[c * G + g] holds rows group g (U rows each, G = W / U groups) for the
// U-th part c of the 16 columns, U bytes per column; after it, groups of 2U rows and 2U parts.
template <int W, int U>
MMEDGE_INLINE void transpose_round(Bytes16* x) {
  constexpr int G = W / U;
  Bytes16 y[W];
#pragma GCC unroll 16
  for (int c = 0; c < U; ++c)
#pragma GCC unroll 16
    for (int i = 0; i < G / 2; ++i) {
      y[(2 * c) * (G / 2) + i] = interleave<U, false>(x[c * G + 2 * i], x[c * G + 2 * i + 1]);
      y[(2 * c + 1) * (G / 2) + i] = interleave<U, true>(x[c * G + 2 * i], x[c * G + 2 * i + 1]);
    }
  std::memcpy(x, y, sizeof(y));
}

// T[j * W + r] = rows[r][j] for j < n: W rows (rows[r] = src + r * stride) transposed.
template <int W>
MMEDGE_INLINE void transpose_rows(const uint8_t* const* rows, int64_t n, uint8_t* T) {
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) {
    Bytes16 x[W];
#pragma GCC unroll 16
    for (int r = 0; r < W; ++r) std::memcpy(&x[r], rows[r] + j, 16);
    if constexpr (W >= 2) transpose_round<W, 1>(x);
    if constexpr (W >= 4) transpose_round<W, 2>(x);
    if constexpr (W >= 8) transpose_round<W, 4>(x);
    if constexpr (W >= 16) transpose_round<W, 8>(x);
    // x[c] now holds columns [16 c / W, 16 (c + 1) / W), W bytes (one per row) each.
#pragma GCC unroll 16
    for (int c = 0; c < W; ++c) std::memcpy(T + j * W + 16 * c, &x[c], 16);
  }
  for (; j < n; ++j)
    for (int r = 0; r < W; ++r) T[j * W + r] = rows[r][j];
}

// Rows in lanes: the rows' bytes are transposed once (T[j * W + r] = byte j of row r), then every
// tap of every output is one vector multiply-add across the W rows, with the weight broadcast.
template <int W>
MMEDGE_INLINE void resample_horizontal_t(int rows, const uint8_t* src, int64_t src_stride,
                                         int col0, int col1, int out_pixels, const int* first,
                                         const int* count, const int32_t* k, int ksize,
                                         uint8_t* dst, int64_t dst_stride, uint8_t* T) {
  using I = typename Vec<W>::I;
  const uint8_t* row[W];
  for (int r = 0; r < W; ++r)  // lanes past `rows` repeat the last row; their sums are dropped
    row[r] = src + static_cast<int64_t>(r < rows ? r : rows - 1) * src_stride + 3 * col0;
  transpose_rows<W>(row, 3 * static_cast<int64_t>(col1 - col0), T);
  for (int o = 0; o < out_pixels; ++o) {
    const int32_t* kk = k + static_cast<int64_t>(o) * ksize;
    const uint8_t* t0 = T + 3 * static_cast<int64_t>(first[o] - col0) * W;
    I a0 = I{} + (1 << (kPillowPrecisionBits - 1)), a1 = a0, a2 = a0;
    for (int t = 0; t < count[o]; ++t) {
      const int32_t w = kk[t];
      a0 += widen<W>(t0 + (3 * t + 0) * W) * w;
      a1 += widen<W>(t0 + (3 * t + 1) * W) * w;
      a2 += widen<W>(t0 + (3 * t + 2) * W) * w;
    }
    a0 = clip8<W>(a0);
    a1 = clip8<W>(a1);
    a2 = clip8<W>(a2);
    uint8_t* d = dst + 3 * static_cast<int64_t>(o);
    for (int r = 0; r < rows; ++r) {
      d[r * dst_stride + 0] = static_cast<uint8_t>(a0[r]);
      d[r * dst_stride + 1] = static_cast<uint8_t>(a1[r]);
      d[r * dst_stride + 2] = static_cast<uint8_t>(a2[r]);
    }
  }
}

template <int W>
MMEDGE_INLINE void resample_vertical_t(const uint8_t* rows, int64_t stride, int count,
                                       const int32_t* k, int64_t n, uint8_t* dst) {
  using I = typename Vec<W>::I;
  int64_t i = 0;
  for (; i + W <= n; i += W) {
    I acc = I{} + (1 << (kPillowPrecisionBits - 1));
    for (int t = 0; t < count; ++t) acc += widen<W>(rows + t * stride + i) * k[t];
    const typename Bytes<W>::U out = __builtin_convertvector(clip8<W>(acc), typename Bytes<W>::U);
    std::memcpy(dst + i, &out, sizeof(out));
  }
  for (; i < n; ++i) {
    int32_t acc = 1 << (kPillowPrecisionBits - 1);
    for (int t = 0; t < count; ++t) acc += rows[t * stride + i] * k[t];
    acc >>= kPillowPrecisionBits;
    dst[i] = static_cast<uint8_t>(acc < 0 ? 0 : (acc > 255 ? 255 : acc));
  }
}

// Online-softmax update of the columns of S [rows][cols] (see cpu_simd.h), vectors across columns.
template <int W>
MMEDGE_INLINE void softmax_cols_t(float* S, int64_t lds, int rows, int cols, float* m, float* l,
                                  float* corr) {
  using F = typename Vec<W>::F;
  const F neg_inf = F{} - INFINITY;
  int c = 0;
  for (; c + W <= cols; c += W) {
    const F m_old = load<W>(m + c);
    F mx = m_old;
    for (int r = 0; r < rows; ++r) {
      const F v = load<W>(S + r * lds + c);
      mx = v > mx ? v : mx;
    }
    const F shift = mx == neg_inf ? F{} : mx;  // a column with every key masked: p = 0
    F sum = F{};
    for (int r = 0; r < rows; ++r) {
      const F e = vexp<W>(load<W>(S + r * lds + c) - shift);
      store<W>(S + r * lds + c, e);
      sum += e;
    }
    const F cr = vexp<W>(m_old - shift);  // m_old = -inf gives 0
    store<W>(corr + c, cr);
    store<W>(l + c, load<W>(l + c) * cr + sum);
    store<W>(m + c, mx);
  }
  for (; c < cols; ++c) {  // the last columns one at a time
    float mx = m[c];
    for (int r = 0; r < rows; ++r) mx = S[r * lds + c] > mx ? S[r * lds + c] : mx;
    const float shift = mx == -INFINITY ? 0.0f : mx;
    float sum = 0.0f;
    for (int r = 0; r < rows; ++r) {
      const float e = std::exp(S[r * lds + c] - shift);
      S[r * lds + c] = e;
      sum += e;
    }
    corr[c] = std::exp(m[c] - shift);
    l[c] = l[c] * corr[c] + sum;
    m[c] = mx;
  }
}

struct Table {
  const char* name;
  void (*gemm_abt)(int, int, int, float, const float*, int64_t, const float*, int64_t, float*,
                   int64_t);
  void (*gemm_ab_acc)(int, int, int, const float*, int64_t, int64_t, const float*, int64_t, float*,
                      int64_t);
  void (*softmax_cols)(float*, int64_t, int, int, float*, float*, float*);
  float (*max_of)(const float*, int);
  float (*exp_shift_sum)(float*, int, float);
  int resample_rows;
  void (*resample_horizontal_u8)(int, const uint8_t*, int64_t, int, int, int, const int*,
                                 const int*, const int32_t*, int, uint8_t*, int64_t, uint8_t*);
  void (*resample_vertical_u8)(const uint8_t*, int64_t, int, const int32_t*, int64_t, uint8_t*);
};

// One set of entry points per ISA; the register blocking fits its register file (32 zmm, 16 ymm,
// 16 xmm / 32 NEON q).
#define MMEDGE_SIMD_VARIANT(SUFFIX, ATTR, W, MR, NR, PV_ROWS)                                      \
  ATTR void gemm_abt_##SUFFIX(int M, int N, int K, float alpha, const float* A, int64_t lda,      \
                              const float* B, int64_t ldb, float* C, int64_t ldc) {               \
    gemm_abt_t<W, MR, NR>(M, N, K, alpha, A, lda, B, ldb, C, ldc);                                \
  }                                                                                                \
  ATTR void gemm_ab_acc_##SUFFIX(int M, int N, int K, const float* A, int64_t lda, int64_t ska,    \
                                 const float* B, int64_t ldb, float* C, int64_t ldc) {            \
    gemm_ab_acc_t<W, PV_ROWS>(M, N, K, A, lda, ska, B, ldb, C, ldc);                              \
  }                                                                                                \
  ATTR void softmax_cols_##SUFFIX(float* S, int64_t lds, int rows, int cols, float* m, float* l,   \
                                  float* corr) {                                                   \
    softmax_cols_t<W>(S, lds, rows, cols, m, l, corr);                                             \
  }                                                                                                \
  ATTR float max_of_##SUFFIX(const float* x, int n) { return max_of_t<W>(x, n); }                  \
  ATTR float exp_shift_sum_##SUFFIX(float* x, int n, float shift) {                               \
    return exp_shift_sum_t<W>(x, n, shift);                                                        \
  }                                                                                                \
  ATTR void resample_horizontal_u8_##SUFFIX(int rows, const uint8_t* src, int64_t src_stride,      \
                                            int col0, int col1, int out_pixels, const int* first,  \
                                            const int* count, const int32_t* k, int ksize,         \
                                            uint8_t* dst, int64_t dst_stride, uint8_t* scratch) {  \
    resample_horizontal_t<W>(rows, src, src_stride, col0, col1, out_pixels, first, count, k,       \
                             ksize, dst, dst_stride, scratch);                                     \
  }                                                                                                \
  ATTR void resample_vertical_u8_##SUFFIX(const uint8_t* rows, int64_t stride, int count,          \
                                          const int32_t* k, int64_t n, uint8_t* dst) {             \
    resample_vertical_t<W>(rows, stride, count, k, n, dst);                                        \
  }

MMEDGE_SIMD_VARIANT(generic, , 4, 2, 4, 2)
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
MMEDGE_SIMD_VARIANT(avx2, __attribute__((target("avx2,fma"))), 8, 2, 4, 2)
MMEDGE_SIMD_VARIANT(avx512, __attribute__((target("avx512f"))), 16, 4, 4, 6)
#endif

// MMEDGE_SIMD=generic|avx2 caps the instruction set below what the CPU offers, so that the tests
// run every variant on one machine and a user can rule SIMD out when chasing a wrong result. Read
// once, at the first kernel call; other values change nothing.
bool isa_allowed(const char* isa) {
  const char* cap = std::getenv("MMEDGE_SIMD");
  if (cap == nullptr) return true;
  if (std::strcmp(cap, "generic") == 0) return false;  // only the portable code
  if (std::strcmp(cap, "avx2") == 0) return std::strcmp(isa, "avx512") != 0;
  return true;
}

const Table& table() {
  static const Table t = [] {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && isa_allowed("avx512"))
      return Table{"avx512", gemm_abt_avx512, gemm_ab_acc_avx512, softmax_cols_avx512,
                   max_of_avx512, exp_shift_sum_avx512, 16, resample_horizontal_u8_avx512,
                   resample_vertical_u8_avx512};
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && isa_allowed("avx2"))
      return Table{"avx2", gemm_abt_avx2, gemm_ab_acc_avx2, softmax_cols_avx2, max_of_avx2,
                   exp_shift_sum_avx2, 8, resample_horizontal_u8_avx2, resample_vertical_u8_avx2};
#endif
    return Table{"generic", gemm_abt_generic, gemm_ab_acc_generic, softmax_cols_generic,
                 max_of_generic, exp_shift_sum_generic, 4, resample_horizontal_u8_generic,
                 resample_vertical_u8_generic};
  }();
  return t;
}

}  // namespace

const char* simd_isa() noexcept { return table().name; }

void gemm_abt(int M, int N, int K, float alpha, const float* A, int64_t lda, const float* B,
              int64_t ldb, float* C, int64_t ldc) noexcept {
  table().gemm_abt(M, N, K, alpha, A, lda, B, ldb, C, ldc);
}

void gemm_ab_acc(int M, int N, int K, const float* A, int64_t lda, const float* B, int64_t ldb,
                 float* C, int64_t ldc, int64_t ska) noexcept {
  table().gemm_ab_acc(M, N, K, A, lda, ska, B, ldb, C, ldc);
}

void softmax_cols(float* S, int64_t lds, int rows, int cols, float* m, float* l,
                  float* corr) noexcept {
  table().softmax_cols(S, lds, rows, cols, m, l, corr);
}

float max_of(const float* x, int n) noexcept { return table().max_of(x, n); }

float exp_shift_sum(float* x, int n, float shift) noexcept {
  return table().exp_shift_sum(x, n, shift);
}

int resample_rows() noexcept { return table().resample_rows; }

void resample_horizontal_u8(int rows, const uint8_t* src, int64_t src_stride, int col0, int col1,
                            int out_pixels, const int* first, const int* count, const int32_t* k,
                            int ksize, uint8_t* dst, int64_t dst_stride, uint8_t* scratch) noexcept {
  table().resample_horizontal_u8(rows, src, src_stride, col0, col1, out_pixels, first, count, k,
                                 ksize, dst, dst_stride, scratch);
}

void resample_vertical_u8(const uint8_t* rows, int64_t stride, int count, const int32_t* k,
                          int64_t n, uint8_t* dst) noexcept {
  table().resample_vertical_u8(rows, stride, count, k, n, dst);
}

}  // namespace mmedge::cpu
