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
