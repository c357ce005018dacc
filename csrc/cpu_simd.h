// The few dense loops the CPU kernels (patch_embed.cpp, attention.cpp) spend their time in, written
// once and compiled for several instruction sets, one picked at run time (cpu_simd.cpp). The wheel
// is built without -march=native, so this is where AVX2/AVX-512 come from on x86-64; elsewhere
// (aarch64: NEON) the portable version is used. Internal to mmedge_core: not a public API.
#pragma once

#include <cstdint>

namespace mmedge::cpu {

// The instruction set the helpers below run with on this CPU: "avx512", "avx2" or "generic".
const char* simd_isa() noexcept;

// C[i][j] = alpha * sum_k A[i][k] * B[j][k]   for i < M, j < N  (A times B transposed)
//   A[i][k] = A[i * lda + k], B[j][k] = B[j * ldb + k], C[i][j] = C[i * ldc + j]
void gemm_abt(int M, int N, int K, float alpha, const float* A, int64_t lda, const float* B,
              int64_t ldb, float* C, int64_t ldc) noexcept;

// C[i][j] += sum_k A[i][k] * B[k][j]   for i < M, j < N  (vectors along j)
//   A[i][k] = A[i * lda + k * ska], B[k][j] = B[k * ldb + j], C[i][j] = C[i * ldc + j]
void gemm_ab_acc(int M, int N, int K, const float* A, int64_t lda, const float* B, int64_t ldb,
                 float* C, int64_t ldc, int64_t ska = 1) noexcept;

// Pillow's 8-bit resampling (libImaging/Resample.c, ImagingResample*_8bpc): weights in fixed
// point with kPillowPrecisionBits fraction bits, each output rounded (+ half) and clipped to 0..255.
// Integer sums are exact in any order, so the vector versions equal Pillow's pixels exactly.
constexpr int kPillowPrecisionBits = 32 - 8 - 2;
constexpr int kMaxResampleRows = 16;  // the most rows resample_horizontal_u8 takes in one call

// How many rows resample_horizontal_u8 takes at once on this CPU (its vector width, <= 16).
int resample_rows() noexcept;

// The horizontal pass for `rows` (1..resample_rows()) rows at once, the rows in vector lanes:
//   dst[r * dst_stride + 3 * o + c] = clip(sum_t src[r * src_stride + 3 * (first[o] + t) + c]
//                                                  * k[o * ksize + t])   for t < count[o]
// for every output pixel o < out_pixels, channel c < 3. Reads src's pixel columns [col0, col1)
// only (every first[o] >= col0 and first[o] + count[o] <= col1); `scratch` holds at least
// 3 * (col1 - col0) * kMaxResampleRows bytes (the rows transposed, channels interleaved).
void resample_horizontal_u8(int rows, const uint8_t* src, int64_t src_stride, int col0, int col1,
                            int out_pixels, const int* first, const int* count, const int32_t* k,
                            int ksize, uint8_t* dst, int64_t dst_stride, uint8_t* scratch) noexcept;

// The vertical pass for one output row, vectors along it:
//   dst[i] = clip(sum_t rows[t * stride + i] * k[t])   for t < count, i < n.
void resample_vertical_u8(const uint8_t* rows, int64_t stride, int count, const int32_t* k,
                          int64_t n, uint8_t* dst) noexcept;

// One online-softmax step down the columns of S[r][c] = S[r * lds + c] (r < rows keys, c < cols
// queries), vectors across the columns. Per column c, with the running max m[c] and sum l[c]:
//   m' = max(m[c], max_r S[r][c]);  S[r][c] = exp(S[r][c] - m');  corr[c] = exp(m[c] - m');
//   l[c] = l[c] * corr[c] + sum_r S[r][c];  m[c] = m'
// A column whose scores are all -inf so far gets p = 0 and corr = 0.
void softmax_cols(float* S, int64_t lds, int rows, int cols, float* m, float* l,
                  float* corr) noexcept;

// max_i x[i]; -inf for n == 0.
float max_of(const float* x, int n) noexcept;

// x[i] = exp(x[i] - shift) in place and returns the sum. exp(-inf) is 0; the relative error of one
// exp is a few float ulps (Cephes polynomial).
float exp_shift_sum(float* x, int n, float shift) noexcept;

}  // namespace mmedge::cpu
