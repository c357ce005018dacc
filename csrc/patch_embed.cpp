// CPU reference of the fused preprocessing + patch embedding (see patch_embed.h for the stages).
//
// Work is split by blocks of patch rows, as many as a multiple of the threads and of equal size.
// For a block, each thread resamples horizontally only the source rows the block needs and only
// the crop's columns (uint8, the crop's width; 4-16 rows at once, the rows in vector lanes:
// cpu::resample_horizontal_u8), keeps the rows the next block shares, resamples vertically one
// image row at a time (vectors along the row), turns each pixel into its normalized float through
// a 3 x 256 table, and scatters it straight into the block's patch matrix, stored transposed
// [3 * P * P, patches]; one GEMM (weights [D, 3 * P * P] times that, vectors along the patches)
// then gives the block's tokens.
//
// The resampling is Pillow's ImagingResample for 8-bit images (libImaging/Resample.c): the same
// coefficients (double, normalized, rounded to 22-bit fixed point), the same passes (each rounded
// and clipped to uint8; a pass is skipped where that size does not change) in the same order:
// horizontal first, except that Pillow >= 13 (python-pillow/Pillow#9549) goes vertical first when
// the height shrinks by more than twice as many pixels as the width. Vertical-first rows are
// computed straight from the frame, one output row at a time, over the columns the crop reads.
// Pillow < 13 always goes horizontal first; the pixels then differ in those cases only.
// Keep the coefficient arithmetic free of FMA contraction (this file is compiled without
// fp-contract=fast) or the weights can differ from Pillow's in the last bit.
#include "patch_embed.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "cpu_simd.h"

namespace mmedge {
namespace {

constexpr int kPrecisionBits = cpu::kPillowPrecisionBits;  // Pillow's PRECISION_BITS, 8-bit images

double bicubic_filter(double x) {  // Pillow's bicubic_filter, a = -0.5; support 2
  const double a = -0.5;
  if (x < 0.0) x = -x;
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
  if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
  return 0.0;
}

// Pillow's fixed-point resampling weights for the outputs [out0, out0 + n) of a resize of one axis
// from in_size to out_size (precompute_coeffs + normalize_coeffs_8bpc).
struct Taps {
  int ksize = 0;
  std::vector<int> first;  // first[o]: the first input index output out0 + o reads
  std::vector<int> count;  // count[o]: how many consecutive inputs it reads
  std::vector<int32_t> k;  // k[o * ksize + x]: the weight of input first[o] + x, 2^22 = 1.0
};

Taps pil_bicubic_taps(int in_size, int out_size, int out0, int n) {
  const double scale = static_cast<double>(in_size) / out_size;
  const double filterscale = scale < 1.0 ? 1.0 : scale;
  const double support = 2.0 * filterscale;
  Taps t;
  t.ksize = static_cast<int>(std::ceil(support)) * 2 + 1;
  t.first.resize(n);
  t.count.resize(n);
  t.k.assign(static_cast<size_t>(n) * t.ksize, 0);
  std::vector<double> w(t.ksize);
  const double ss = 1.0 / filterscale;
  for (int o = 0; o < n; ++o) {
    const int xx = out0 + o;
    const double center = (xx + 0.5) * scale;
    int xmin = static_cast<int>(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    int xmax = static_cast<int>(center + support + 0.5);
    if (xmax > in_size) xmax = in_size;
    xmax -= xmin;
    double ww = 0.0;
    for (int x = 0; x < xmax; ++x) {
      w[x] = bicubic_filter((x + xmin - center + 0.5) * ss);
      ww += w[x];
    }
    for (int x = 0; x < xmax; ++x) {
      if (ww != 0.0) w[x] /= ww;
      const double f = w[x] * (1 << kPrecisionBits);
      t.k[static_cast<size_t>(o) * t.ksize + x] =
          w[x] < 0 ? static_cast<int32_t>(-0.5 + f) : static_cast<int32_t>(0.5 + f);
    }
    t.first[o] = xmin;
    t.count[o] = xmax;
  }
  return t;
}

inline uint8_t clip8(int32_t v) {
  v >>= kPrecisionBits;
  return static_cast<uint8_t>(v < 0 ? 0 : (v > 255 ? 255 : v));
}

// Where the crop's rows (or columns) come from: crop index c <-> resized index c + offset; crop
// indices outside [lo, hi) are zero padding.
struct CropAxis {
  int offset, lo, hi;
};

CropAxis crop_axis(int resized, int cropped) {
  const int offset = resized >= cropped ? (resized - cropped) / 2 : -((cropped - resized + 1) / 2);
  return {offset, std::max(0, -offset), std::min(cropped, resized - offset)};
}

// One row of Pillow's horizontal pass for the crop's columns: dst[3 * x + c] for crop column x
// (zero where x is padding) from src, whose column 0 is the frame's column src_col0. Scalar: the
// vertical-first order's one row at a time (horizontal_rows is the vector version for many rows).
void horizontal_pass(const uint8_t* src, int src_col0, const Taps& tx, const CropAxis& cx,
                     int width, uint8_t* dst) {
  std::memset(dst, 0, 3 * static_cast<size_t>(cx.lo));
  for (int x = cx.lo; x < cx.hi; ++x) {
    const int o = x - cx.lo;
    const int32_t* k = tx.k.data() + static_cast<size_t>(o) * tx.ksize;
    const uint8_t* s = src + 3 * (tx.first[o] - src_col0);
    int32_t s0 = 1 << (kPrecisionBits - 1), s1 = s0, s2 = s0;
    for (int t = 0; t < tx.count[o]; ++t) {
      s0 += s[3 * t + 0] * k[t];
      s1 += s[3 * t + 1] * k[t];
      s2 += s[3 * t + 2] * k[t];
    }
    dst[3 * x + 0] = clip8(s0);
    dst[3 * x + 1] = clip8(s1);
    dst[3 * x + 2] = clip8(s2);
  }
  if (width > cx.hi) std::memset(dst + 3 * cx.hi, 0, 3 * static_cast<size_t>(width - cx.hi));
}

// Pillow's horizontal pass of `rows` frame rows (the frame's columns [col0, col1) are the ones the
// taps read) into dst rows of the crop's width (zero where a column is padding), vectors across
// the rows (cpu::resample_horizontal_u8), cpu::resample_rows() rows per call.
void horizontal_rows(const uint8_t* src, int64_t src_stride, int rows, const Taps& tx,
                     const CropAxis& cx, int col0, int col1, int width, uint8_t* dst,
                     int64_t dst_stride, uint8_t* scratch) {
  const int lanes = cpu::resample_rows();
  for (int r = 0; r < rows; ++r) {
    uint8_t* d = dst + r * dst_stride;
    std::memset(d, 0, 3 * static_cast<size_t>(cx.lo));
    if (width > cx.hi) std::memset(d + 3 * cx.hi, 0, 3 * static_cast<size_t>(width - cx.hi));
  }
  if (cx.hi <= cx.lo) return;
  for (int r = 0; r < rows; r += lanes) {
    cpu::resample_horizontal_u8(std::min(lanes, rows - r), src + r * src_stride, src_stride, col0,
                                col1, cx.hi - cx.lo, tx.first.data(), tx.count.data(), tx.k.data(),
                                tx.ksize, dst + r * dst_stride + 3 * cx.lo, dst_stride, scratch);
  }
}

}  // namespace

int64_t patch_embed_num_tokens(const PatchEmbedParams& p) noexcept {
  if (p.patch_size <= 0) return 0;
  return (p.class_embedding ? 1 : 0) +
         static_cast<int64_t>(p.image_height / p.patch_size) * (p.image_width / p.patch_size);
}

void patch_embed_cpu(const PatchEmbedParams& p) {
  const int P = p.patch_size, D = p.embed_dim, IW = p.image_width;
  const int per_row = IW / P;                // patches in a patch row
  const int patch_rows = p.image_height / P;
  const int K = 3 * P * P;                   // one patch, flattened [c][i][j] like the weight
  const int n_class = p.class_embedding ? 1 : 0;
  const bool resize_x = p.resize_width != p.frame_width;
  const bool resize_y = p.resize_height != p.frame_height;
  const CropAxis cx = crop_axis(p.resize_width, IW);
  const CropAxis cy = crop_axis(p.resize_height, p.image_height);
  const int64_t row_bytes = 3 * static_cast<int64_t>(IW);

  const Taps tx = resize_x ? pil_bicubic_taps(p.frame_width, p.resize_width, cx.lo + cx.offset,
                                              cx.hi - cx.lo)
                           : Taps{};
  const Taps ty = resize_y ? pil_bicubic_taps(p.frame_height, p.resize_height, cy.lo + cy.offset,
                                              cy.hi - cy.lo)
                           : Taps{};
  // Pillow 13 runs the vertical pass first when the height shrinks by more than twice as many
  // pixels as the width (python-pillow/Pillow#9549); the order changes the rounded pixels.
  const bool vertical_first = p.pillow13_pass_order && resize_x && resize_y &&
                              p.resize_height < p.frame_height &&
                              (p.frame_height - p.resize_height) > 2 * (p.frame_width - p.resize_width);
  // The frame's columns [hx0, hx1) the horizontal taps read (first[] never decreases).
  int hx0 = 0, hx1 = 0;
  if (resize_x && cx.hi > cx.lo) {
    hx0 = tx.first[0];
    for (int o = 0; o < cx.hi - cx.lo; ++o) hx1 = std::max(hx1, tx.first[o] + tx.count[o]);
  }
  const int64_t v_bytes = vertical_first ? 3 * static_cast<int64_t>(hx1 - hx0) : 0;

  // lut[c][u]: the normalized float32 value of channel c at 8-bit value u, as numpy computes it.
  float lut[3][256];
  for (int c = 0; c < 3; ++c) {
    for (int u = 0; u < 256; ++u) {
      float v = p.do_rescale ? static_cast<float>(static_cast<double>(u) * p.rescale_factor)
                             : static_cast<float>(u);
      if (p.do_normalize) v = (v - p.mean[c]) / p.std[c];
      lut[c][u] = v;
    }
  }

  int threads = p.num_threads;
#ifdef _OPENMP
  if (threads <= 0) threads = omp_get_max_threads();
#endif
  threads = std::max(1, std::min(threads, patch_rows));
  // Blocks of whole patch rows, about 128 patches each (one GEMM per block), as many blocks as a
  // multiple of the threads and their sizes within one patch row of each other, so that every
  // thread gets the same work: block b is the patch rows [block_row(b), block_row(b + 1)).
  int n_blocks = 0;
  if (patch_rows > 0) {
    n_blocks = std::max(1, (patch_rows * per_row + 127) / 128);
    n_blocks = std::min(patch_rows, (n_blocks + threads - 1) / threads * threads);
  }
  threads = std::max(1, std::min(threads, n_blocks));
  auto block_row = [&](int b) { return static_cast<int>(static_cast<int64_t>(b) * patch_rows / n_blocks); };
  const int max_m = n_blocks > 0 ? (patch_rows + n_blocks - 1) / n_blocks * per_row : 0;
  const int m_pad = (max_m + 15) / 16 * 16;  // columns of the transposed patch matrix
  // The source rows each block needs, [src0, src1): the frame's rows feeding its image rows.
  std::vector<int> src0(n_blocks), src1(n_blocks);
  int max_src_rows = 0;
  for (int b = 0; b < n_blocks; ++b) {
    const int r0 = std::max(block_row(b) * P, cy.lo);
    const int r1 = std::min(block_row(b + 1) * P, cy.hi);
    if (r0 >= r1 || vertical_first) {  // vertical-first reads the frame directly
      src0[b] = src1[b] = 0;
      continue;
    }
    if (resize_y) {
      src0[b] = ty.first[r0 - cy.lo];
      src1[b] = 0;
      for (int r = r0; r < r1; ++r) src1[b] = std::max(src1[b], ty.first[r - cy.lo] + ty.count[r - cy.lo]);
    } else {
      src0[b] = r0 + cy.offset;
      src1[b] = r1 + cy.offset;
    }
    max_src_rows = std::max(max_src_rows, src1[b] - src0[b]);
  }

  if (n_class) {
    for (int d = 0; d < D; ++d)
      p.out[d] = p.class_embedding[d] + (p.position_embedding ? p.position_embedding[d] : 0.0f);
  }

#ifdef _OPENMP
#pragma omp parallel num_threads(threads)
#endif
  {
    std::vector<uint8_t> hbuf(static_cast<size_t>(max_src_rows) * row_bytes);  // resampled rows
    std::vector<uint8_t> transposed(3 * static_cast<size_t>(hx1 - hx0) * cpu::kMaxResampleRows);
    std::vector<uint8_t> vrow(v_bytes);
    std::vector<uint8_t> pix(row_bytes);
    // The block's patches transposed, pt[k][q] = pt[k * m_pad + q] (k = (c * P + i) * P + j,
    // q = patch in the block), and the projection transposed, ct[d][q] = ct[d * m_pad + q].
    std::vector<float> pt(static_cast<size_t>(K) * m_pad, 0.0f);
    std::vector<float> ct(static_cast<size_t>(D) * m_pad);
    int buf0 = 0, buf1 = 0;  // hbuf holds the frame's rows [buf0, buf1), horizontally resampled

#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
    for (int b = 0; b < n_blocks; ++b) {
      // 1. Horizontal pass over the rows this block needs, reusing what the last block left.
      int have = src0[b];
      if (buf0 <= src0[b] && src0[b] < buf1) {
        std::memmove(hbuf.data(), hbuf.data() + (src0[b] - buf0) * row_bytes,
                     (buf1 - src0[b]) * row_bytes);
        have = buf1;
      }
      if (resize_x && src1[b] > have) {
        horizontal_rows(p.frame + have * p.frame_row_stride, p.frame_row_stride, src1[b] - have,
                        tx, cx, hx0, hx1, IW, hbuf.data() + (have - src0[b]) * row_bytes, row_bytes,
                        transposed.data());
      }
      for (int sy = have; sy < src1[b] && !resize_x; ++sy) {
        const uint8_t* src = p.frame + sy * p.frame_row_stride;
        uint8_t* dst = hbuf.data() + (sy - src0[b]) * row_bytes;
        std::memset(dst, 0, row_bytes);  // padding columns stay 0
        if (cx.hi > cx.lo)
          std::memcpy(dst + 3 * cx.lo, src + 3 * (cx.lo + cx.offset), 3 * (cx.hi - cx.lo));
      }
      buf0 = src0[b];
      buf1 = src1[b];

      // 2. Vertical pass one image row at a time, normalized into the block's patch matrix:
      //    patches[q][(c * P + i) * P + j] for patch q = (row - first row) / P * per_row + px.
      const int pr0 = block_row(b);
      const int pr1 = block_row(b + 1);
      for (int r = pr0 * P; r < pr1 * P; ++r) {
        const uint8_t* row;
        if (r < cy.lo || r >= cy.hi) {
          std::memset(pix.data(), 0, row_bytes);
          row = pix.data();
        } else if (vertical_first) {
          const int o = r - cy.lo;
          cpu::resample_vertical_u8(p.frame + ty.first[o] * p.frame_row_stride + 3 * hx0,
                                    p.frame_row_stride, ty.count[o],
                                    ty.k.data() + static_cast<size_t>(o) * ty.ksize, v_bytes,
                                    vrow.data());
          horizontal_pass(vrow.data(), hx0, tx, cx, IW, pix.data());
          row = pix.data();
        } else if (resize_y) {
          const int o = r - cy.lo;
          cpu::resample_vertical_u8(hbuf.data() + (ty.first[o] - buf0) * row_bytes, row_bytes,
                                    ty.count[o], ty.k.data() + static_cast<size_t>(o) * ty.ksize,
                                    row_bytes, pix.data());
          row = pix.data();
        } else {
          row = hbuf.data() + (r + cy.offset - buf0) * row_bytes;
        }
        const int i = r % P;
        const int q0 = (r / P - pr0) * per_row;  // the block's first patch in this image row
        for (int c = 0; c < 3; ++c) {
          const float* lc = lut[c];
          for (int j = 0; j < P; ++j) {
            float* dst = pt.data() + static_cast<size_t>((c * P + i) * P + j) * m_pad + q0;
            const uint8_t* s = row + 3 * j + c;
            for (int px = 0; px < per_row; ++px) dst[px] = lc[s[3 * P * px]];
          }
        }
      }

      // 3. Projection: ct = W pt (W [D][K] times the patches, vectors along the patches), then
      //    tokens[q][d] = ct[d][q] (+ bias + position).
      const int M = (pr1 - pr0) * per_row;
      const int64_t t0 = n_class + static_cast<int64_t>(pr0) * per_row;
      std::fill(ct.begin(), ct.end(), 0.0f);
      cpu::gemm_ab_acc(D, (M + 15) / 16 * 16, K, p.weight, K, pt.data(), m_pad, ct.data(), m_pad);
      for (int q = 0; q < M; ++q) {
        float* o = p.out + (t0 + q) * D;
        const float* pos = p.position_embedding ? p.position_embedding + (t0 + q) * D : nullptr;
        for (int d = 0; d < D; ++d) {
          float v = ct[static_cast<size_t>(d) * m_pad + q];
          if (p.bias) v += p.bias[d];
          if (pos) v += pos[d];
          o[d] = v;
        }
      }
    }
  }
}

}  // namespace mmedge
