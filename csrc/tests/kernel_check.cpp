// Standalone checks of the CPU kernels in mmedge_core (patch_embed.cpp, attention.cpp and the SIMD
// helpers of cpu_simd.cpp) against plain double-precision references written here, over the shapes
// tests/test_kernels.py covers and more: odd, tiny and huge frames, 1-token sequences, GQA, masks,
// decode against a cache, odd head dims and thread counts. No Python and no pybind11.
//
// CMakeLists.txt builds it, with mmedge_core, under AddressSanitizer and UndefinedBehaviorSanitizer
// when MMEDGE_SANITIZE=ON; scripts/sanitize.sh configures, builds and runs it (CI does). So that an
// access one element past the end is caught, every buffer a kernel gets is its own heap allocation
// of exactly the size the kernel may touch (frames end with their last pixel, not a row stride).
//
// What is checked:
//   - cpu_simd: gemm_abt, gemm_ab_acc (strided A), softmax_cols, max_of, exp_shift_sum over sizes
//     around every vector width and register block, against double references;
//   - patch_embed_cpu: an identity projection makes the tokens the preprocessed pixels, which must
//     equal, bit for bit, the reference below: Pillow's fixed-point bicubic resize done the plain
//     way (whole image, one pass after the other, no fusion, no cropped coefficient ranges), the
//     center crop with zero padding, then rescale and normalize. The same pipeline with a random
//     projection, bias, class token and positions is checked against a double conv. The resize
//     reference follows Pillow's algorithm; tests/test_kernels.py checks the kernel against Pillow
//     itself.
//   - attention_cpu: against a double softmax(q k^T * scale + mask) v with GQA, causal from the
//     bottom right, all-masked rows giving zeros; the scratch sized by attention_scratch_floats.
// Tolerances are per op and scale with the magnitude of the terms summed (STYLE.md #5). Results
// must not depend on the thread count: a few cases also run with 1, 2 and 3 threads and must agree
// with OpenMP's default bit for bit.
//
// Exit status: 0 when every check passes, 1 otherwise; the first mismatches of a failing case are
// printed. Usage: kernel_check [-v]   (-v prints every case).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <map>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "attention.h"
#include "cpu_simd.h"
#include "patch_embed.h"
#include "runtime_info.h"

namespace {

using mmedge::AttentionParams;
using mmedge::PatchEmbedParams;

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr float kNegInfF = -std::numeric_limits<float>::infinity();
constexpr double kUlp = 1.0 / (1 << 24);  // float32 unit roundoff

bool g_verbose = false;
int g_cases = 0, g_failed = 0;
int64_t g_values = 0;

// ---- comparing ----------------------------------------------------------------------------------

// |got - ref| <= atol + rtol * mag elementwise, where mag is the scale of the rounding error (the
// sum of the absolute values of the terms that made ref; |ref| when mag is null). A NaN or an
// infinity where ref is finite fails; an infinite ref needs the same infinity. Prints the first
// mismatches.
bool check_close(const std::string& what, const float* got, const double* ref, const double* mag,
                 size_t n, double atol, double rtol) {
  size_t bad = 0;
  double worst = 0.0;
  for (size_t i = 0; i < n; ++i) {
    const double g = got[i], r = ref[i];
    bool ok;
    if (std::isinf(r)) {
      ok = g == r;
    } else {
      const double err = std::fabs(g - r);
      const double bound = atol + rtol * (mag ? mag[i] : std::fabs(r));
      ok = err <= bound;  // false for NaN
      if (std::isfinite(err)) worst = std::max(worst, err / bound);
    }
    if (!ok) {
      if (bad < 5)
        std::printf("  %s: [%zu] got %.9g, ref %.9g (mag %.3g)\n", what.c_str(), i, g, r,
                    mag ? mag[i] : std::fabs(r));
      ++bad;
    }
  }
  g_values += static_cast<int64_t>(n);
  if (bad) std::printf("  %s: %zu of %zu values off\n", what.c_str(), bad, n);
  else if (g_verbose)
    std::printf("  %s: %zu values, worst err/bound %.3f\n", what.c_str(), n, worst);
  return bad == 0;
}

// got == ref bit for bit (0.0 and -0.0 count as equal; a NaN never does).
bool check_equal(const std::string& what, const float* got, const float* ref, size_t n) {
  size_t bad = 0;
  for (size_t i = 0; i < n; ++i) {
    if (!(got[i] == ref[i])) {
      if (bad < 5) std::printf("  %s: [%zu] got %.9g, expected exactly %.9g\n", what.c_str(), i,
                               got[i], ref[i]);
      ++bad;
    }
  }
  g_values += static_cast<int64_t>(n);
  if (bad) std::printf("  %s: %zu of %zu values differ\n", what.c_str(), bad, n);
  return bad == 0;
}

void record(const std::string& name, bool ok) {
  ++g_cases;
  if (!ok) {
    ++g_failed;
    std::printf("FAIL %s\n", name.c_str());
  } else if (g_verbose) {
    std::printf("ok   %s\n", name.c_str());
  }
}

std::vector<float> normal(size_t n, std::mt19937_64& rng, float sigma = 1.0f) {
  std::normal_distribution<float> d(0.0f, sigma);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

std::string fmt(const char* f, ...) __attribute__((format(printf, 1, 2)));
std::string fmt(const char* f, ...) {
  char buf[256];
  va_list ap;
  va_start(ap, f);
  std::vsnprintf(buf, sizeof buf, f, ap);
  va_end(ap);
  return buf;
}

// ---- cpu_simd helpers ---------------------------------------------------------------------------

// The error bound of the kernels' float exp(x - shift) against exp in double: a few ulps of the
// polynomial, plus |x - shift| u from rounding the difference to float first.
double exp_error_bound(double ref, double arg) {
  return std::isinf(arg) ? 0.0 : ref * (4.0 + std::fabs(arg)) * 2 * kUlp;
}

// Sizes around every vector width (4, 8, 16 floats) and register block of the three ISA variants.
const int kSizes[] = {0, 1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 33, 47, 64, 65, 97};

void check_simd() {
  std::mt19937_64 rng(1);
  bool ok = true;
  // gemm_abt: C = alpha A B^T over small and odd M, N, K; leading dimensions longer
  // than the rows where they can be.
  for (int M : {1, 2, 3, 4, 5, 9, 17}) {
    for (int N : {1, 3, 4, 5, 8, 13}) {
      for (int K : kSizes) {
        const int64_t lda = K + (M % 2), ldb = K + (N % 3), ldc = N + 1;
        // Exact sizes: the last row of each matrix ends at its last element.
        std::vector<float> A = normal((M - 1) * lda + K, rng), B = normal((N - 1) * ldb + K, rng);
        std::vector<float> C((M - 1) * ldc + N, 7.0f);
        const float alpha = 0.37f;
        mmedge::cpu::gemm_abt(M, N, K, alpha, A.data(), lda, B.data(), ldb, C.data(), ldc);
        std::vector<float> got(M * N);
        std::vector<double> ref(M * N), mag(M * N);
        for (int i = 0; i < M; ++i) {
          for (int j = 0; j < N; ++j) {
            double s = 0.0, a = 0.0;
            for (int k = 0; k < K; ++k) {
              s += double(A[i * lda + k]) * B[j * ldb + k];
              a += std::fabs(double(A[i * lda + k]) * B[j * ldb + k]);
            }
            ref[i * N + j] = alpha * s;
            mag[i * N + j] = std::fabs(alpha) * a;
            got[i * N + j] = C[i * ldc + j];
          }
        }
        // Any summation order of K float products is within (K + 2) u of the sum of |terms|.
        ok &= check_close(fmt("gemm_abt M%d N%d K%d", M, N, K), got.data(), ref.data(), mag.data(),
                          got.size(), 1e-30, (K + 2) * kUlp);
      }
    }
  }
  // gemm_ab_acc: C += A B, A read with a column stride (ska), as attention reads V^T.
  for (int M : {1, 2, 3, 4, 5, 6, 7, 13}) {
    for (int N : kSizes) {
      if (N == 0) continue;
      for (int K : {0, 1, 2, 5, 16, 33}) {
        for (int64_t ska : {int64_t(1), int64_t(3)}) {
          const int64_t lda = ska == 1 ? K + 1 : 1;  // ska 3: A[i][k] = A[i + 3 k], transposed
          const int64_t ldb = N + 2, ldc = N + 3;
          const size_t a_size = K == 0 ? 1 : size_t((M - 1) * lda + (K - 1) * ska + 1);
          std::vector<float> A = normal(a_size, rng);
          std::vector<float> B = normal(K == 0 ? 1 : (K - 1) * ldb + N, rng);
          std::vector<float> C = normal((M - 1) * ldc + N, rng);
          std::vector<float> C0 = C;
          mmedge::cpu::gemm_ab_acc(M, N, K, A.data(), lda, B.data(), ldb, C.data(), ldc, ska);
          std::vector<float> got(M * N);
          std::vector<double> ref(M * N), mag(M * N);
          for (int i = 0; i < M; ++i) {
            for (int j = 0; j < N; ++j) {
              double s = C0[i * ldc + j], a = std::fabs(s);
              for (int k = 0; k < K; ++k) {
                const double t = double(A[i * lda + k * ska]) * B[k * ldb + j];
                s += t;
                a += std::fabs(t);
              }
              ref[i * N + j] = s;
              mag[i * N + j] = a;
              got[i * N + j] = C[i * ldc + j];
            }
          }
          ok &= check_close(fmt("gemm_ab_acc M%d N%d K%d ska%lld", M, N, K, (long long)ska),
                            got.data(), ref.data(), mag.data(), got.size(), 1e-30, (K + 2) * kUlp);
        }
      }
    }
  }
  // max_of and exp_shift_sum over every tail length.
  for (int n : kSizes) {
    std::vector<float> x = normal(n, rng, 4.0f);
    if (n > 3) x[n / 2] = kNegInfF;  // exp(-inf) = 0
    const float mx = mmedge::cpu::max_of(x.data(), n);
    double ref_max = -kInf;
    for (float v : x) ref_max = std::max(ref_max, double(v));
    if (double(mx) != ref_max) {
      std::printf("  max_of n%d: got %.9g, ref %.9g\n", n, mx, ref_max);
      ok = false;
    }
    const float shift = n ? mx : 0.0f;
    std::vector<float> e = x;
    const float sum = mmedge::cpu::exp_shift_sum(e.data(), n, shift);
    std::vector<double> ref(n), mag(n);
    double ref_sum = 0.0, sum_bound = 0.0;
    for (int i = 0; i < n; ++i) {
      ref_sum += ref[i] = std::exp(double(x[i]) - shift);
      sum_bound += mag[i] = exp_error_bound(ref[i], double(x[i]) - shift);
    }
    sum_bound += (n + 1) * kUlp * ref_sum;
    ok &= check_close(fmt("exp_shift_sum n%d values", n), e.data(), ref.data(), mag.data(), n,
                      1e-37, 1.0);
    ok &= check_close(fmt("exp_shift_sum n%d sum", n), &sum, &ref_sum, &sum_bound, 1, 1e-37, 1.0);
  }
  // softmax_cols: one online-softmax step on S [rows][cols] with running m, l per column. Columns
  // start fresh (m = -inf), with an earlier max above or below the block's, or fully masked.
  for (int rows : {1, 2, 7, 16, 33}) {
    for (int cols : {1, 3, 4, 8, 15, 16, 17, 32, 35}) {
      const int64_t lds = cols + (rows % 2) * 5;
      std::vector<float> S = normal((rows - 1) * lds + cols, rng, 3.0f);
      std::vector<float> m(cols), l(cols), corr(cols, -1.0f);
      for (int c = 0; c < cols; ++c) {
        const int kind = c % 4;
        m[c] = kind == 0 ? kNegInfF : (kind == 1 ? 9.0f : (kind == 2 ? -2.0f : kNegInfF));
        l[c] = kind == 1 || kind == 2 ? 1.5f : 0.0f;
        if (kind == 3 || (kind == 1 && c % 8 == 1))  // every score masked in this block
          for (int r = 0; r < rows; ++r) S[r * lds + c] = kNegInfF;
        else if (rows > 2)
          S[(c % rows) * lds + c] = kNegInfF;  // one masked score
      }
      const std::vector<float> S0 = S, m0 = m, l0 = l;
      mmedge::cpu::softmax_cols(S.data(), lds, rows, cols, m.data(), l.data(), corr.data());
      std::vector<float> got_s(rows * cols);
      std::vector<double> ref_s(rows * cols), mag_s(rows * cols), ref_m(cols), ref_l(cols),
          ref_c(cols), mag_c(cols), mag_l(cols);
      for (int c = 0; c < cols; ++c) {
        double mx = m0[c];
        for (int r = 0; r < rows; ++r) mx = std::max(mx, double(S0[r * lds + c]));
        const double shift = std::isinf(mx) ? 0.0 : mx;
        double sum = 0.0, sum_bound = 0.0;
        for (int r = 0; r < rows; ++r) {
          const int i = r * cols + c;
          sum += ref_s[i] = std::exp(double(S0[r * lds + c]) - shift);
          sum_bound += mag_s[i] = exp_error_bound(ref_s[i], double(S0[r * lds + c]) - shift);
          got_s[i] = S[r * lds + c];
        }
        ref_c[c] = std::exp(double(m0[c]) - shift);
        mag_c[c] = exp_error_bound(ref_c[c], double(m0[c]) - shift);
        ref_l[c] = l0[c] * ref_c[c] + sum;
        mag_l[c] = l0[c] * mag_c[c] + sum_bound + (rows + 2) * kUlp * ref_l[c];
        ref_m[c] = mx;
      }
      const std::string name = fmt("softmax_cols rows%d cols%d", rows, cols);
      ok &= check_close(name + " p", got_s.data(), ref_s.data(), mag_s.data(), got_s.size(), 1e-37,
                        1.0);
      ok &= check_close(name + " corr", corr.data(), ref_c.data(), mag_c.data(), cols, 1e-37, 1.0);
      ok &= check_close(name + " l", l.data(), ref_l.data(), mag_l.data(), cols, 1e-37, 1.0);
      ok &= check_close(name + " m", m.data(), ref_m.data(), nullptr, cols, 0.0, 0.0);
    }
  }
  record(fmt("cpu_simd helpers (isa %s)", mmedge::cpu::simd_isa()), ok);
}

// ---- patch embedding: the reference -------------------------------------------------------------

// An RGB uint8 image, packed: px[(y * w + x) * 3 + c].
struct Image8 {
  int h = 0, w = 0;
  std::vector<uint8_t> px;
};

// Pillow's resampling weights for one axis, in_size -> out_size (libImaging/Resample.c:
// precompute_coeffs with bicubic_filter, a = -0.5, support 2, then normalize_coeffs_8bpc).
// This translation unit is ISO C++ (no fp-contract), so the double arithmetic rounds as Pillow's.
struct Coeffs {
  int ksize = 0;
  std::vector<int> xmin, xcount;
  std::vector<int32_t> k;  // k[o * ksize + t], 1 << 22 = 1.0
};

constexpr int kPrecisionBits = 22;

double pil_bicubic(double x) {
  const double a = -0.5;
  x = std::fabs(x);
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
  if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
  return 0.0;
}

Coeffs pil_coeffs(int in_size, int out_size) {
  const double scale = double(in_size) / out_size;
  const double filterscale = std::max(scale, 1.0);
  const double support = 2.0 * filterscale;
  const double ss = 1.0 / filterscale;
  Coeffs c;
  c.ksize = int(std::ceil(support)) * 2 + 1;
  c.xmin.resize(out_size);
  c.xcount.resize(out_size);
  c.k.assign(size_t(out_size) * c.ksize, 0);
  for (int o = 0; o < out_size; ++o) {
    const double center = (o + 0.5) * scale;
    const int xmin = std::max(0, int(center - support + 0.5));
    const int xmax = std::min(in_size, int(center + support + 0.5)) - xmin;
    std::vector<double> w(std::max(xmax, 0));
    double ww = 0.0;
    for (int x = 0; x < xmax; ++x) ww += w[x] = pil_bicubic((x + xmin - center + 0.5) * ss);
    for (int x = 0; x < xmax; ++x) {
      const double v = ww != 0.0 ? w[x] / ww : w[x];
      c.k[size_t(o) * c.ksize + x] = v < 0 ? int32_t(-0.5 + v * (1 << kPrecisionBits))
                                           : int32_t(0.5 + v * (1 << kPrecisionBits));
    }
    c.xmin[o] = xmin;
    c.xcount[o] = xmax;
  }
  return c;
}

uint8_t pil_clip8(int64_t acc) {
  const int64_t v = acc >> kPrecisionBits;
  return uint8_t(v < 0 ? 0 : (v > 255 ? 255 : v));
}

// One resampling pass along x (horizontal) or y (vertical), the whole image.
Image8 pil_pass(const Image8& in, int out_size, bool horizontal) {
  const Coeffs c = pil_coeffs(horizontal ? in.w : in.h, out_size);
  Image8 out;
  out.h = horizontal ? in.h : out_size;
  out.w = horizontal ? out_size : in.w;
  out.px.resize(size_t(out.h) * out.w * 3);
  for (int y = 0; y < out.h; ++y) {
    for (int x = 0; x < out.w; ++x) {
      const int o = horizontal ? x : y;
      for (int ch = 0; ch < 3; ++ch) {
        int64_t acc = 1 << (kPrecisionBits - 1);
        for (int t = 0; t < c.xcount[o]; ++t) {
          const int sx = horizontal ? c.xmin[o] + t : x, sy = horizontal ? y : c.xmin[o] + t;
          acc += int64_t(in.px[(size_t(sy) * in.w + sx) * 3 + ch]) * c.k[size_t(o) * c.ksize + t];
        }
        out.px[(size_t(y) * out.w + x) * 3 + ch] = pil_clip8(acc);
      }
    }
  }
  return out;
}

// Image.resize((w, h), BICUBIC): a pass only along an axis whose size changes; horizontal first,
// except that Pillow >= 13 goes vertical first when the height shrinks by more than twice as many
// pixels as the width (python-pillow/Pillow#9549).
Image8 pil_resize(const Image8& in, int h, int w, bool pillow13) {
  const bool need_h = w != in.w, need_v = h != in.h;
  const bool vertical_first =
      pillow13 && need_h && need_v && h < in.h && (in.h - h) > 2 * (in.w - w);
  Image8 im = in;
  if (vertical_first) {
    im = pil_pass(im, h, false);
    return pil_pass(im, w, true);
  }
  if (need_h) im = pil_pass(im, w, true);
  if (need_v) im = pil_pass(im, h, false);
  return im;
}

// transformers' center_crop: the crop starts at (H - h) // 2; along an axis where the image is
// smaller it is zero-padded, the image placed at ceil((h - H) / 2).
Image8 center_crop(const Image8& in, int h, int w) {
  auto start = [](int have, int want) {
    return have >= want ? (have - want) / 2 : -((want - have + 1) / 2);
  };
  const int y0 = start(in.h, h), x0 = start(in.w, w);
  Image8 out;
  out.h = h;
  out.w = w;
  out.px.assign(size_t(h) * w * 3, 0);
  for (int y = 0; y < h; ++y) {
    for (int x = 0; x < w; ++x) {
      const int sy = y + y0, sx = x + x0;
      if (sy < 0 || sy >= in.h || sx < 0 || sx >= in.w) continue;
      std::memcpy(&out.px[(size_t(y) * w + x) * 3], &in.px[(size_t(sy) * in.w + sx) * 3], 3);
    }
  }
  return out;
}

struct Preprocess {
  bool do_rescale = true;
  double rescale_factor = 1.0 / 255.0;
  bool do_normalize = true;
  float mean[3] = {0.48145466f, 0.4578275f, 0.40821073f};  // CLIP's
  float std[3] = {0.26862954f, 0.26130258f, 0.27577711f};
};

// The float32 value of channel c at 8-bit value u, as numpy computes it (patch_embed.h, stage 3).
float normalized(const Preprocess& pp, int c, uint8_t u) {
  float v = pp.do_rescale ? float(double(u) * pp.rescale_factor) : float(u);
  if (pp.do_normalize) v = (v - pp.mean[c]) / pp.std[c];
  return v;
}

// ---- patch embedding: the cases -----------------------------------------------------------------

struct PatchCase {
  std::string family;
  int frame_h, frame_w;
  int resize_h, resize_w;  // after the bicubic resize
  int image_h, image_w;    // after the crop
  int patch, dim;          // dim 0: identity projection (D = 3 P^2), exact pixels
  bool bias = false, cls = false, pos = false;
  Preprocess pp;
  int row_padding = 0;     // extra bytes per frame row (a crop of a wider buffer)
  bool pillow13 = true;
  bool thread_sweep = false;
};

// A test frame of h x w pixels: smooth content plus noise, so bicubic overshoot hits the uint8
// clipping in both passes. Made once per size (the large ones serve several cases).
const Image8& test_frame(int h, int w) {
  static std::map<std::pair<int, int>, Image8> cache;
  Image8& im = cache[{h, w}];
  if (im.px.empty()) {
    std::mt19937_64 rng(uint64_t(h) * 65537 + w);
    std::uniform_int_distribution<int> noise(-60, 59);
    im.h = h;
    im.w = w;
    im.px.resize(size_t(h) * w * 3);
    for (int y = 0; y < h; ++y)
      for (int x = 0; x < w; ++x)
        for (int c = 0; c < 3; ++c) {
          const double base = 127 + 120 * std::sin(x * 0.05 + y * 0.03 + c);
          im.px[(size_t(y) * w + x) * 3 + c] = uint8_t(std::clamp(int(base) + noise(rng), 0, 255));
        }
  }
  return im;
}

// The reference resize of test_frame(h, w), made once per size and pass order.
const Image8& reference_resized(int h, int w, int rh, int rw, bool pillow13) {
  static std::map<std::tuple<int, int, int, int, bool>, Image8> cache;
  Image8& im = cache[{h, w, rh, rw, pillow13}];
  if (im.px.empty()) im = pil_resize(test_frame(h, w), rh, rw, pillow13);
  return im;
}

void run_patch_case(const PatchCase& pc) {
  const std::string name =
      fmt("patch_embed %s frame %dx%d -> resize %dx%d -> image %dx%d P%d D%d%s%s%s%s%s",
          pc.family.c_str(), pc.frame_h, pc.frame_w, pc.resize_h, pc.resize_w, pc.image_h,
          pc.image_w, pc.patch, pc.dim ? pc.dim : 3 * pc.patch * pc.patch, pc.bias ? " bias" : "",
          pc.cls ? " cls" : "", pc.pos ? " pos" : "", pc.row_padding ? " strided" : "",
          pc.pillow13 ? "" : " pillow12-order");
  const int P = pc.patch, K = 3 * P * P;
  const bool identity = pc.dim == 0;
  const int D = identity ? K : pc.dim;
  const int64_t stride = 3 * int64_t(pc.frame_w) + pc.row_padding;
  std::mt19937_64 rng(uint64_t(pc.frame_h) * 7919 + pc.frame_w * 31 + P + pc.dim);
  // The frame in its own buffer, exactly as long as the kernel may read: the last row ends with its
  // last pixel; the padding bytes between rows are garbage the kernel must not use.
  const Image8& src = test_frame(pc.frame_h, pc.frame_w);
  std::vector<uint8_t> frame(size_t((pc.frame_h - 1) * stride + 3 * int64_t(pc.frame_w)), 0xA5);
  for (int y = 0; y < pc.frame_h; ++y)
    std::memcpy(&frame[y * stride], &src.px[size_t(y) * pc.frame_w * 3], 3 * size_t(pc.frame_w));

  // Weights [D][3][P][P]: the identity (token = its patch's pixels) or small random values.
  std::vector<float> weight;
  if (identity) {
    weight.assign(size_t(D) * K, 0.0f);
    for (int d = 0; d < D; ++d) weight[size_t(d) * K + d] = 1.0f;
  } else {
    weight = normal(size_t(D) * K, rng, 0.02f);
  }
  const int rows = pc.image_h / P, cols = pc.image_w / P;
  const int n_class = pc.cls ? 1 : 0;
  const int64_t tokens = n_class + int64_t(rows) * cols;
  std::vector<float> bias = pc.bias ? normal(D, rng) : std::vector<float>{};
  std::vector<float> cls = pc.cls ? normal(D, rng) : std::vector<float>{};
  std::vector<float> pos = pc.pos ? normal(size_t(tokens) * D, rng) : std::vector<float>{};

  PatchEmbedParams p;
  p.frame = frame.data();
  p.frame_height = pc.frame_h;
  p.frame_width = pc.frame_w;
  p.frame_row_stride = stride;
  p.resize_height = pc.resize_h;
  p.resize_width = pc.resize_w;
  p.pillow13_pass_order = pc.pillow13;
  p.image_height = pc.image_h;
  p.image_width = pc.image_w;
  p.do_rescale = pc.pp.do_rescale;
  p.rescale_factor = pc.pp.rescale_factor;
  p.do_normalize = pc.pp.do_normalize;
  for (int c = 0; c < 3; ++c) p.mean[c] = pc.pp.mean[c], p.std[c] = pc.pp.std[c];
  p.patch_size = P;
  p.embed_dim = D;
  p.weight = weight.data();
  p.bias = pc.bias ? bias.data() : nullptr;
  p.class_embedding = pc.cls ? cls.data() : nullptr;
  p.position_embedding = pc.pos ? pos.data() : nullptr;

  bool ok = mmedge::patch_embed_num_tokens(p) == tokens;
  if (!ok)
    std::printf("  num_tokens: got %lld, expected %lld\n",
                (long long)mmedge::patch_embed_num_tokens(p), (long long)tokens);
  std::vector<float> out(size_t(tokens) * D, std::numeric_limits<float>::quiet_NaN());
  p.out = out.data();
  mmedge::patch_embed_cpu(p);

  // The reference pixels: resize, crop, normalize; then patches x[q][(c * P + i) * P + j].
  const Image8 img = center_crop(
      reference_resized(pc.frame_h, pc.frame_w, pc.resize_h, pc.resize_w, pc.pillow13), pc.image_h,
      pc.image_w);
  const int64_t n_patches = int64_t(rows) * cols;
  std::vector<float> x(size_t(n_patches) * K);
  for (int py = 0; py < rows; ++py)
    for (int px = 0; px < cols; ++px)
      for (int c = 0; c < 3; ++c)
        for (int i = 0; i < P; ++i)
          for (int j = 0; j < P; ++j) {
            const uint8_t u = img.px[(size_t(py * P + i) * img.w + px * P + j) * 3 + c];
            x[size_t(py * cols + px) * K + (c * P + i) * P + j] = normalized(pc.pp, c, u);
          }

  if (identity) {
    // Adding 1 * v and zeros is exact: the tokens are the reference pixels bit for bit.
    ok &= check_equal(name + " pixels", out.data(), x.data(), x.size());
  } else {
    std::vector<double> ref(size_t(tokens) * D), mag(size_t(tokens) * D);
    for (int d = 0; d < D && pc.cls; ++d) {
      ref[d] = double(cls[d]) + (pc.pos ? pos[d] : 0.0);
      mag[d] = std::fabs(cls[d]) + (pc.pos ? std::fabs(pos[d]) : 0.0);
    }
    for (int64_t q = 0; q < n_patches; ++q) {
      const float* xq = &x[size_t(q) * K];
      for (int d = 0; d < D; ++d) {
        const float* wd = &weight[size_t(d) * K];
        double s = 0.0, a = 0.0;
        for (int k = 0; k < K; ++k) {
          s += double(xq[k]) * wd[k];
          a += std::fabs(double(xq[k]) * wd[k]);
        }
        const size_t o = size_t(n_class + q) * D + d;
        if (pc.bias) s += bias[d], a += std::fabs(bias[d]);
        if (pc.pos) s += pos[o], a += std::fabs(pos[o]);
        ref[o] = s;
        mag[o] = a;
      }
    }
    // K <= 768 float products and two float additions: (K + 4) u of the sum of |terms| bounds any
    // summation order.
    ok &= check_close(name + " tokens", out.data(), ref.data(), mag.data(), out.size(), 1e-30,
                      (K + 4) * kUlp);
  }

  if (pc.thread_sweep) {
    for (int threads : {1, 2, 3}) {
      std::vector<float> again(out.size(), std::numeric_limits<float>::quiet_NaN());
      p.out = again.data();
      p.num_threads = threads;
      mmedge::patch_embed_cpu(p);
      ok &= check_equal(name + fmt(" %d threads vs default", threads), again.data(), out.data(),
                        out.size());
    }
  }
  record(name, ok);
}

// transformers' {"shortest_edge": S}: the short side becomes S, the long int(S * long / short).
void shortest_edge(int h, int w, int s, int& rh, int& rw) {
  if (w <= h) {
    rw = s;
    rh = int(double(s) * h / w);
  } else {
    rh = s;
    rw = int(double(s) * w / h);
  }
}

void check_patch_embed() {
  const int frames[][2] = {{1, 1},   {2, 3},     {3, 7},     {7, 5},     {33, 17},   {17, 33},
                           {224, 224}, {13, 500}, {480, 640}, {640, 480}, {1080, 1920},
                           {1920, 1080}, {500, 400}, {301, 387}};
  Preprocess raw;
  raw.do_rescale = raw.do_normalize = false;
  const Preprocess clip_pp;
  Preprocess siglip_pp;
  for (int c = 0; c < 3; ++c) siglip_pp.mean[c] = siglip_pp.std[c] = 0.5f;

  for (const auto& f : frames) {
    const int h = f[0], w = f[1];
    int rh, rw;
    shortest_edge(h, w, 224, rh, rw);
    // CLIP 224 (resize the short side, center crop): exact pixels, raw and normalized, P 8.
    run_patch_case({"clip224-raw", h, w, rh, rw, 224, 224, 8, 0, false, false, false, raw});
    run_patch_case({"clip224", h, w, rh, rw, 224, 224, 8, 0, false, false, false, clip_pp});
    // CLIP's tower: P 14, class token and positions, random projection.
    run_patch_case({"clip224", h, w, rh, rw, 224, 224, 14, 40, false, true, true, clip_pp});
    // SigLIP 384 (square resize, no crop): exact pixels with P 1, projection with P 14 (27 x 27
    // patches, 6 rows and columns unused) and P 16 with a bias.
    run_patch_case({"siglip384-raw", h, w, 384, 384, 384, 384, 1, 0, false, false, false, raw});
    run_patch_case({"siglip384", h, w, 384, 384, 384, 384, 14, 24, true, false, true, siglip_pp});
    run_patch_case({"siglip384", h, w, 384, 384, 384, 384, 16, 33, true, false, false, siglip_pp});
    // A non-square model size, and a strided frame (rows of a wider buffer).
    PatchCase wide{"siglip64x96", h, w, 64, 96, 64, 96, 8, 0, false, false, false, siglip_pp};
    wide.row_padding = 3 * 11 + 1;
    run_patch_case(wide);
  }
  // The crop larger than the resized image: zero-padded pixels (u = 0, normalized).
  for (const auto& f : {std::pair{30, 70}, {70, 30}, {5, 5}, {47, 41}}) {
    int rh, rw;
    shortest_edge(f.first, f.second, 40, rh, rw);
    run_patch_case({"clip40-crop48", f.first, f.second, rh, rw, 48, 48, 8, 0, false, false, false,
                    clip_pp});
    run_patch_case({"clip40-crop48", f.first, f.second, rh, rw, 48, 48, 8, 20, false, true, true,
                    clip_pp});
  }
  // No resize on one or both axes; crop only; an image not a multiple of P.
  run_patch_case({"no-resize", 224, 224, 224, 224, 224, 224, 16, 0, false, false, false, clip_pp});
  run_patch_case({"crop-only", 230, 260, 230, 260, 224, 224, 14, 0, false, false, false, clip_pp});
  run_patch_case({"resize-w-only", 100, 173, 100, 64, 100, 64, 8, 0, false, false, false, raw});
  run_patch_case({"resize-h-only", 173, 100, 64, 100, 64, 100, 8, 0, false, false, false, raw});
  run_patch_case({"ragged", 90, 77, 45, 50, 45, 50, 7, 30, true, false, true, siglip_pp});
  // Threads: 1, 2, 3 and the default give the same tokens, bit for bit (block boundaries move).
  for (int P : {8, 14}) {
    PatchCase t{"threads", 480, 640, 224, 298, 224, 224, P, 48, true, true, true, clip_pp};
    t.thread_sweep = true;
    t.row_padding = 6;
    run_patch_case(t);
  }
  // Pillow 13's pass order at its boundary (checked against Pillow 13.0): the height shrinking by
  // exactly twice the width's shrink goes horizontal first, one pixel more vertical first, as does
  // any height shrink while the width grows.
  for (const auto& f : {std::pair{100, 50}, {101, 50}}) {
    for (bool pillow13 : {true, false}) {
      PatchCase edge{"pass-order-edge", f.first, f.second, 60, 30, 60, 30, 1, 0, false, false,
                     false, raw};
      edge.pillow13 = pillow13;
      run_patch_case(edge);
    }
  }
  run_patch_case({"pass-order-widen", 100, 50, 40, 60, 40, 60, 1, 0, false, false, false, raw});
  // Random sizes up and down on each axis with P 1 and an identity projection, in both pass
  // orders: every rounding case of Pillow's two passes, vertical first included.
  std::mt19937_64 rng(11);
  std::uniform_int_distribution<int> size(1, 160);
  for (int i = 0; i < 60; ++i) {
    const int fh = size(rng), fw = size(rng), h = size(rng), w = size(rng);
    PatchCase sweep{"sweep", fh, fw, h, w, h, w, 1, 0, false, false, false, raw};
    sweep.pillow13 = i % 3 != 0;
    run_patch_case(sweep);
  }
}

// ---- attention ----------------------------------------------------------------------------------

enum class MaskKind { kNone, k2d, kBatch, kHeads, kFull, kWider, kRowMasked };
enum class Layout { kBHTD, kBSHD };

struct AttnCase {
  int batch = 1, heads = 1, kv_heads = 1, q_len = 1, kv_len = 1, head_dim = 64;
  int capacity = 0;  // cache rows in k and v (>= kv_len); 0: kv_len
  bool causal = false;
  float scale = 0.0f;  // 0: 1 / sqrt(head_dim)
  MaskKind mask = MaskKind::kNone;
  Layout layout = Layout::kBHTD;
  bool thread_sweep = false;
  uint64_t seed = 0;
};

const char* mask_name(MaskKind m) {
  switch (m) {
    case MaskKind::kNone: return "";
    case MaskKind::k2d: return " mask2d";
    case MaskKind::kBatch: return " mask[b,1]";
    case MaskKind::kHeads: return " mask[1,h]";
    case MaskKind::kFull: return " mask[b,h]";
    case MaskKind::kWider: return " mask-wider";
    case MaskKind::kRowMasked: return " mask-row-all-inf";
  }
  return "";
}

// A [batch][heads][rows][head_dim] tensor in one of the layouts, in its own exact-size allocation.
struct Tensor4 {
  std::vector<float> data;
  int64_t sb = 0, sh = 0, st = 0;
  Tensor4(int b, int h, int t, int d, Layout layout) {
    if (layout == Layout::kBHTD) {
      st = d, sh = int64_t(t) * d, sb = int64_t(h) * t * d;
    } else {  // [batch][rows][heads][head_dim] seen as [b][h][t][d]
      sh = d, st = int64_t(h) * d, sb = int64_t(t) * h * d;
    }
    data.resize(size_t(b) * h * t * d);
  }
  float& at(int b, int h, int t, int d) { return data[b * sb + h * sh + t * st + d]; }
  float at(int b, int h, int t, int d) const { return data[b * sb + h * sh + t * st + d]; }
};

struct Mask {
  std::vector<float> data;
  int64_t sb = 0, sh = 0, st = 0;
  float at(int b, int h, int t, int j) const { return data[b * sb + h * sh + t * st + j]; }
};

Mask make_mask(const AttnCase& c, std::mt19937_64& rng) {
  Mask m;
  if (c.mask == MaskKind::kNone) return m;
  const int cols = c.kv_len + (c.mask == MaskKind::kWider ? 13 : 0);
  const int lead_b = c.mask == MaskKind::kBatch || c.mask == MaskKind::kFull ? c.batch : 1;
  const int lead_h = c.mask == MaskKind::kHeads || c.mask == MaskKind::kFull ? c.heads : 1;
  m.st = cols;
  m.sh = lead_h > 1 ? int64_t(c.q_len) * cols : 0;
  m.sb = lead_b > 1 ? int64_t(lead_h) * c.q_len * cols : 0;
  m.data = normal(size_t(lead_b) * lead_h * c.q_len * cols, rng);
  std::uniform_real_distribution<float> u(0.0f, 1.0f);
  for (size_t i = 0; i < m.data.size(); ++i) {
    if (c.mask == MaskKind::kRowMasked) {
      // Query 2 (of its batch and head): every key masked.
      m.data[i] = (i / cols) % c.q_len == 2 % c.q_len ? kNegInfF : 0.0f;
    } else {
      if (u(rng) < 0.3f) m.data[i] = kNegInfF;
      if (i % cols == 0) m.data[i] = 0.0f;  // every query keeps a key
    }
  }
  return m;
}

// double softmax(q k^T * scale + mask) v over keys [0, kv_len), GQA, causal from the bottom right
// (query t at position kv_len - q_len + t); all-masked rows give zeros. mag: sum_j p_j |v_j|, the
// scale of the output's rounding error.
void attention_ref(const AttnCase& c, float scale, const Tensor4& q, const Tensor4& k,
                   const Tensor4& v, const Mask* mask, std::vector<double>& ref,
                   std::vector<double>& mag) {
  const int D = c.head_dim, N = c.kv_len, group = c.heads / c.kv_heads;
  ref.assign(size_t(c.batch) * c.heads * c.q_len * D, 0.0);
  mag.assign(ref.size(), 0.0);
  std::vector<double> s(N);
  for (int b = 0; b < c.batch; ++b)
    for (int h = 0; h < c.heads; ++h)
      for (int t = 0; t < c.q_len; ++t) {
        const int g = h / group;
        double mx = -kInf;
        for (int j = 0; j < N; ++j) {
          double dot = 0.0;
          for (int d = 0; d < D; ++d) dot += double(q.at(b, h, t, d)) * k.at(b, g, j, d);
          s[j] = dot * scale;
          if (mask && !mask->data.empty()) s[j] += mask->at(b, h, t, j);
          if (c.causal && j > t + N - c.q_len) s[j] = -kInf;
          mx = std::max(mx, s[j]);
        }
        const size_t o = ((size_t(b) * c.heads + h) * c.q_len + t) * D;
        if (mx == -kInf) continue;  // every key masked: zeros
        double den = 0.0;
        for (int j = 0; j < N; ++j) den += s[j] = std::exp(s[j] - mx);
        for (int j = 0; j < N; ++j) {
          const double pj = s[j] / den;
          if (pj == 0.0) continue;
          for (int d = 0; d < D; ++d) {
            ref[o + d] += pj * v.at(b, g, j, d);
            mag[o + d] += pj * std::fabs(v.at(b, g, j, d));
          }
        }
      }
}

// Runs attention_cpu on (q, k, v) into a fresh out with exactly-sized scratch; returns out as
// [b][h][t][d] (packed).
std::vector<float> run_attention(const AttnCase& c, float scale, const Tensor4& q,
                                 const Tensor4& k, const Tensor4& v, const Mask& mask,
                                 int num_threads) {
  Tensor4 out(c.batch, c.heads, c.q_len, c.head_dim, c.layout);
  std::fill(out.data.begin(), out.data.end(), std::numeric_limits<float>::quiet_NaN());
  AttentionParams p;
  p.q = q.data.data();
  p.q_batch_stride = q.sb, p.q_head_stride = q.sh, p.q_row_stride = q.st;
  p.k = k.data.data();
  p.k_batch_stride = k.sb, p.k_head_stride = k.sh, p.k_row_stride = k.st;
  p.v = v.data.data();
  p.v_batch_stride = v.sb, p.v_head_stride = v.sh, p.v_row_stride = v.st;
  p.out = out.data.data();
  p.o_batch_stride = out.sb, p.o_head_stride = out.sh, p.o_row_stride = out.st;
  if (!mask.data.empty()) {
    p.mask = mask.data.data();
    p.m_batch_stride = mask.sb, p.m_head_stride = mask.sh, p.m_row_stride = mask.st;
  }
  p.batch = c.batch;
  p.num_heads = c.heads;
  p.num_kv_heads = c.kv_heads;
  p.q_len = c.q_len;
  p.kv_len = c.kv_len;
  p.head_dim = c.head_dim;
  p.scale = scale;
  p.causal = c.causal;
  p.num_threads = num_threads;
  std::vector<float> scratch(size_t(mmedge::attention_scratch_floats(p)));
  p.scratch = scratch.data();
  mmedge::attention_cpu(p);
  std::vector<float> packed(out.data.size());
  size_t i = 0;
  for (int b = 0; b < c.batch; ++b)
    for (int h = 0; h < c.heads; ++h)
      for (int t = 0; t < c.q_len; ++t)
        for (int d = 0; d < c.head_dim; ++d) packed[i++] = out.at(b, h, t, d);
  return packed;
}

// Online softmax in float32 over up to 8k keys and float32 dot products of head_dim terms.
constexpr double kAttnAtol = 2e-5, kAttnRtol = 1e-4;

void run_attention_case(const AttnCase& c) {
  const int cap = c.capacity ? c.capacity : c.kv_len;
  const float scale = c.scale != 0.0f ? c.scale : 1.0f / std::sqrt(float(c.head_dim));
  const std::string name = fmt("attention b%d h%d kv%d t%d n%d cap%d d%d%s%s%s%s", c.batch, c.heads,
                               c.kv_heads, c.q_len, c.kv_len, cap, c.head_dim,
                               c.causal ? " causal" : "", mask_name(c.mask),
                               c.layout == Layout::kBSHD ? " bshd" : "",
                               c.scale != 0.0f ? " scale" : "");
  std::mt19937_64 rng(c.seed * 1000003 + uint64_t(c.heads) * 131 + c.q_len * 7 + c.kv_len);
  Tensor4 q(c.batch, c.heads, c.q_len, c.head_dim, c.layout);
  Tensor4 k(c.batch, c.kv_heads, cap, c.head_dim, c.layout);
  Tensor4 v(c.batch, c.kv_heads, cap, c.head_dim, c.layout);
  q.data = normal(q.data.size(), rng);
  k.data = normal(k.data.size(), rng);
  v.data = normal(v.data.size(), rng);
  const Mask mask = make_mask(c, rng);

  bool ok = true;
  const std::vector<float> got = run_attention(c, scale, q, k, v, mask, 0);
  std::vector<double> ref, mag;
  attention_ref(c, scale, q, k, v, &mask, ref, mag);
  ok &= check_close(name, got.data(), ref.data(), mag.data(), got.size(), kAttnAtol, kAttnRtol);
  if (c.thread_sweep) {
    for (int threads : {1, 2, 3}) {
      const std::vector<float> again = run_attention(c, scale, q, k, v, mask, threads);
      ok &= check_equal(name + fmt(" %d threads vs default", threads), again.data(), got.data(),
                        got.size());
    }
  }
  record(name, ok);
}

// Prefill a few tokens, then decode one at a time into a preallocated cache, reusing out and a
// scratch sized once for q_len = 1, as a decoder does: each step equals the reference over the
// cache's first kv_len rows. Long caches jump near the end.
void run_decode_case(int heads, int kv_heads, int capacity, int head_dim) {
  const std::string name =
      fmt("attention decode h%d kv%d cap%d d%d", heads, kv_heads, capacity, head_dim);
  std::mt19937_64 rng(uint64_t(heads) * capacity + head_dim);
  std::normal_distribution<float> normal1(0.0f, 1.0f);
  AttnCase c;
  c.heads = heads, c.kv_heads = kv_heads, c.head_dim = head_dim, c.capacity = capacity;
  c.causal = true;
  Tensor4 k(1, kv_heads, capacity, head_dim, Layout::kBHTD), v = k;
  const int fill = capacity > 1000 ? capacity - 3 : 5;
  for (int g = 0; g < kv_heads; ++g)
    for (int j = 0; j < fill; ++j)
      for (int d = 0; d < head_dim; ++d) {
        k.at(0, g, j, d) = normal1(rng);
        v.at(0, g, j, d) = normal1(rng);
      }
  Tensor4 q(1, heads, 1, head_dim, Layout::kBHTD), out = q;
  AttentionParams p;
  p.batch = 1, p.num_heads = heads, p.num_kv_heads = kv_heads, p.q_len = 1, p.kv_len = 1;
  p.head_dim = head_dim;
  std::vector<float> scratch(size_t(mmedge::attention_scratch_floats(p)));
  bool ok = true;
  for (int pos = fill; pos < fill + 3; ++pos) {
    for (int g = 0; g < kv_heads; ++g)
      for (int d = 0; d < head_dim; ++d) {
        k.at(0, g, pos, d) = normal1(rng);
        v.at(0, g, pos, d) = normal1(rng);
      }
    q.data = normal(q.data.size(), rng);
    std::fill(out.data.begin(), out.data.end(), std::numeric_limits<float>::quiet_NaN());
    p.q = q.data.data(), p.q_batch_stride = q.sb, p.q_head_stride = q.sh, p.q_row_stride = q.st;
    p.k = k.data.data(), p.k_batch_stride = k.sb, p.k_head_stride = k.sh, p.k_row_stride = k.st;
    p.v = v.data.data(), p.v_batch_stride = v.sb, p.v_head_stride = v.sh, p.v_row_stride = v.st;
    p.out = out.data.data(), p.o_batch_stride = out.sb, p.o_head_stride = out.sh;
    p.o_row_stride = out.st;
    p.kv_len = pos + 1;
    p.causal = true;
    p.scale = 1.0f / std::sqrt(float(head_dim));
    p.scratch = scratch.data();
    mmedge::attention_cpu(p);
    c.kv_len = pos + 1;
    std::vector<double> ref, mag;
    attention_ref(c, p.scale, q, k, v, nullptr, ref, mag);
    ok &= check_close(name + fmt(" step kv_len %d", pos + 1), out.data.data(), ref.data(),
                      mag.data(), ref.size(), kAttnAtol, kAttnRtol);
  }
  record(name, ok);
}

void check_attention() {
  // Prefill: head dims 64/80/96/128 x MHA, GQA 3 and 8 x causal or not (tests/test_kernels.py).
  for (int d : {64, 80, 96, 128})
    for (auto hk : {std::pair{6, 6}, {6, 2}, {8, 1}})
      for (bool causal : {false, true}) {
        AttnCase c;
        c.batch = 2, c.heads = hk.first, c.kv_heads = hk.second, c.q_len = c.kv_len = 77;
        c.head_dim = d, c.causal = causal, c.seed = d + hk.first;
        run_attention_case(c);
      }
  // Odd head dims: every tail of the dot products and of the P V accumulation.
  for (int d : {1, 8, 17, 33, 72})
    for (bool causal : {false, true}) {
      AttnCase c;
      c.batch = 1, c.heads = 4, c.kv_heads = 2, c.q_len = 19, c.kv_len = 45, c.head_dim = d;
      c.causal = causal;
      run_attention_case(c);
      c.q_len = 1;  // decode layout
      run_attention_case(c);
    }
  // Lengths: 1-token sequences, more queries than keys, one tile boundary and beyond; both layouts
  // of the kernel (row layout below 16 rows per work item, column layout from 16).
  const int lengths[][2] = {{1, 1}, {1, 2}, {3, 1}, {5, 200}, {16, 16}, {17, 129}, {197, 197},
                            {130, 577}, {1, 128}, {1, 129}, {2, 257}};
  for (const auto& tn : lengths)
    for (bool causal : {false, true}) {
      AttnCase c;
      c.heads = c.kv_heads = 3, c.q_len = tn[0], c.kv_len = tn[1], c.head_dim = 64;
      c.causal = causal, c.scale = 0.3f;
      run_attention_case(c);
    }
  // Masks, broadcast over batch and/or heads or not, wider than kv_len; a fully masked query row.
  for (MaskKind m : {MaskKind::k2d, MaskKind::kBatch, MaskKind::kHeads, MaskKind::kFull,
                     MaskKind::kWider}) {
    for (int t : {20, 3}) {
      AttnCase c;
      c.batch = 2, c.heads = 6, c.kv_heads = 3, c.q_len = t, c.kv_len = 90, c.head_dim = 64;
      c.mask = m, c.causal = m == MaskKind::kFull, c.seed = 7;
      run_attention_case(c);
    }
  }
  for (int t : {4, 40}) {
    AttnCase c;
    c.heads = c.kv_heads = 2, c.q_len = t, c.kv_len = 10, c.mask = MaskKind::kRowMasked;
    run_attention_case(c);
  }
  // Decode against a preallocated cache, up to 8k keys.
  run_decode_case(9, 3, 300, 64);
  run_decode_case(8, 1, 8192, 64);
  run_decode_case(4, 4, 4096, 64);
  run_decode_case(8, 2, 1000, 128);
  run_decode_case(6, 6, 200, 80);
  // A chunk of 16 new queries against 8k keys, causal (chunked prefill); a longer sequence.
  {
    AttnCase c;
    c.heads = 4, c.kv_heads = 2, c.q_len = 16, c.kv_len = 8192, c.causal = true, c.seed = 9;
    run_attention_case(c);
    c.q_len = 513, c.kv_len = 513, c.head_dim = 96;
    run_attention_case(c);
  }
  // The [batch, seq, heads, head_dim] layout through strides; a cache longer than kv_len; threads.
  {
    AttnCase c;
    c.batch = 2, c.heads = 6, c.kv_heads = 2, c.q_len = 33, c.kv_len = 33, c.head_dim = 96;
    c.causal = true, c.layout = Layout::kBSHD, c.thread_sweep = true, c.seed = 10;
    run_attention_case(c);
    c.capacity = 50, c.layout = Layout::kBHTD, c.mask = MaskKind::kFull, c.causal = false;
    run_attention_case(c);
    c.q_len = 1, c.batch = 3, c.heads = 8, c.kv_heads = 1, c.mask = MaskKind::kNone;
    run_attention_case(c);  // decode over several work items, 1-thread vs default
  }
}

}  // namespace

int main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "-v") == 0) {
      g_verbose = true;
    } else {
      std::fprintf(stderr, "usage: %s [-v]\n", argv[0]);
      return 2;
    }
  }
  int threads = 1;
#ifdef _OPENMP
  threads = omp_get_max_threads();
#endif
  const auto t0 = std::chrono::steady_clock::now();
  check_simd();
  check_patch_embed();
  check_attention();
  const double secs =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("kernel_check: mmedge %s, isa %s, %d OpenMP threads: %d cases, %lld values, "
              "%d failed (%.1f s)\n",
              mmedge::version(), mmedge::cpu::simd_isa(), threads, g_cases,
              static_cast<long long>(g_values), g_failed, secs);
  return g_failed ? 1 : 0;
}
