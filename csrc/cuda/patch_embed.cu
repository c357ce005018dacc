// CUDA version of the fused preprocessing + patch embedding (patch_embed.h; patch_embed.cpp is the
// reference): the same PatchEmbedParams with device pointers, the same Pillow-exact pixels.
//
// One thread block per patch. The block computes Pillow's fixed-point taps for its P columns and
// P rows into shared memory (the double arithmetic spelled with __d*_rn intrinsics so nvcc cannot
// fuse it into FMAs and change a weight's last bit), then every pixel of the patch directly from
// the frame: both passes per pixel, each rounded and clipped to uint8 in Pillow's order, normalized
// like numpy does. The patch vector [3 * P * P] stays in shared memory; each warp then takes output
// channels d and reduces patch . weight[d] across its lanes (coalesced weight reads).
// First version, written for correctness; a tiled GEMM over many patches per block would cut the
// weight traffic (each block reads all of it).
#include <cuda_runtime.h>

#include <cmath>

#include "patch_embed.h"

namespace mmedge {
namespace {

constexpr int kThreads = 256;
constexpr int kPrecisionBits = 22;

__device__ double bicubic_filter(double x) {  // Pillow's, a = -0.5, in its evaluation order
  const double a = -0.5;
  if (x < 0.0) x = -x;
  if (x < 1.0) {
    return __dadd_rn(__dmul_rn(__dmul_rn(__dsub_rn(__dmul_rn(a + 2.0, x), a + 3.0), x), x), 1.0);
  }
  if (x < 2.0) {
    return __dmul_rn(__dsub_rn(__dmul_rn(__dadd_rn(__dmul_rn(__dsub_rn(x, 5.0), x), 8.0), x), 4.0), a);
  }
  return 0.0;
}

struct Axis {  // one axis of the resize + crop
  int in_size, out_size;  // frame size, resized size (equal: no resampling on this axis)
  int crop_offset;        // crop index c <-> resized index c + crop_offset
  int crop_size;
};

// Pillow's taps for resized index xx: first input, count, and fixed-point weights into k[].
__device__ void pil_taps(int in_size, int out_size, int xx, int ksize, int* first, int* count,
                         int* k) {
  const double scale = __ddiv_rn(static_cast<double>(in_size), static_cast<double>(out_size));
  const double filterscale = scale < 1.0 ? 1.0 : scale;
  const double support = __dmul_rn(2.0, filterscale);
  const double ss = __ddiv_rn(1.0, filterscale);
  const double center = __dmul_rn(__dadd_rn(static_cast<double>(xx), 0.5), scale);
  int xmin = __double2int_rz(__dadd_rn(__dsub_rn(center, support), 0.5));
  if (xmin < 0) xmin = 0;
  int xmax = __double2int_rz(__dadd_rn(__dadd_rn(center, support), 0.5));
  if (xmax > in_size) xmax = in_size;
  xmax -= xmin;
  double ww = 0.0;
  for (int x = 0; x < xmax; ++x) {
    ww = __dadd_rn(ww, bicubic_filter(__dmul_rn(
                           __dadd_rn(__dsub_rn(static_cast<double>(x + xmin), center), 0.5), ss)));
  }
  for (int x = 0; x < ksize; ++x) {
    int fixed = 0;
    if (x < xmax) {
      double w = bicubic_filter(
          __dmul_rn(__dadd_rn(__dsub_rn(static_cast<double>(x + xmin), center), 0.5), ss));
      if (ww != 0.0) w = __ddiv_rn(w, ww);
      const double f = __dmul_rn(w, static_cast<double>(1 << kPrecisionBits));
      fixed = w < 0 ? __double2int_rz(__dadd_rn(-0.5, f)) : __double2int_rz(__dadd_rn(0.5, f));
    }
    k[x] = fixed;
  }
  *first = xmin;
  *count = xmax;
}

__device__ __forceinline__ int clip8(int v) {
  v >>= kPrecisionBits;
  return v < 0 ? 0 : (v > 255 ? 255 : v);
}

__device__ __forceinline__ float normalized(const PatchEmbedParams& p, int c, int u) {
  float v = p.do_rescale ? __double2float_rn(__dmul_rn(static_cast<double>(u), p.rescale_factor))
                         : static_cast<float>(u);
  if (p.do_normalize) v = __fdiv_rn(__fsub_rn(v, p.mean[c]), p.std[c]);
  return v;
}

__global__ void __launch_bounds__(kThreads)
    patch_embed_kernel(const PatchEmbedParams p, int ksize_x, int ksize_y, bool vertical_first) {
  extern __shared__ float smem[];
  const int P = p.patch_size, D = p.embed_dim, K = 3 * P * P;
  const int per_row = p.image_width / P;
  const int patch = blockIdx.x;
  const int py = patch / per_row, px = patch % per_row;
  const bool resize_x = p.resize_width != p.frame_width;
  const bool resize_y = p.resize_height != p.frame_height;
  const int x_offset = p.resize_width >= p.image_width ? (p.resize_width - p.image_width) / 2
                                                       : -((p.image_width - p.resize_width + 1) / 2);
  const int y_offset = p.resize_height >= p.image_height
                           ? (p.resize_height - p.image_height) / 2
                           : -((p.image_height - p.resize_height + 1) / 2);

  float* values = smem;                                   // [K]: the patch, [c][i][j]
  int* kx = reinterpret_cast<int*>(values + K);           // [P][ksize_x]
  int* ky = kx + P * ksize_x;                             // [P][ksize_y]
  int* fx = ky + P * ksize_y;                             // first[P], count[P] for columns
  int* cntx = fx + P;
  int* fy = cntx + P;                                     // first[P], count[P] for rows
  int* cnty = fy + P;

  // Taps of this patch's columns (threads 0..P-1) and rows (threads P..2P-1); -1: padding.
  for (int i = threadIdx.x; i < 2 * P; i += blockDim.x) {
    const bool col = i < P;
    const int c = (col ? px : py) * P + (col ? i : i - P);  // crop index
    const int r = c + (col ? x_offset : y_offset);           // resized index
    const int out_size = col ? p.resize_width : p.resize_height;
    const int in_size = col ? p.frame_width : p.frame_height;
    int* first = col ? &fx[i] : &fy[i - P];
    int* count = col ? &cntx[i] : &cnty[i - P];
    if (r < 0 || r >= out_size) {
      *first = -1;
      *count = 0;
    } else if (in_size == out_size) {
      *first = r;
      *count = 1;
      (col ? kx + i * ksize_x : ky + (i - P) * ksize_y)[0] = 1 << kPrecisionBits;
    } else {
      pil_taps(in_size, out_size, r, col ? ksize_x : ksize_y, first, count,
               col ? kx + i * ksize_x : ky + (i - P) * ksize_y);
    }
  }
  __syncthreads();

  // Pixels: both passes per pixel, clipped to uint8 after each, in Pillow's order.
  for (int e = threadIdx.x; e < 3 * P * P; e += blockDim.x) {
    const int c = e / (P * P), i = (e / P) % P, j = e % P;
    int u = 0;
    if (fx[j] >= 0 && fy[i] >= 0) {
      const int* wx = kx + j * ksize_x;
      const int* wy = ky + i * ksize_y;
      const uint8_t* base = p.frame + c;
      if (!resize_x && !resize_y) {
        u = base[fy[i] * p.frame_row_stride + 3 * fx[j]];
      } else if (!resize_y) {  // horizontal only
        int acc = 1 << (kPrecisionBits - 1);
        const uint8_t* src = base + fy[i] * p.frame_row_stride;
        for (int s = 0; s < cntx[j]; ++s) acc += src[3 * (fx[j] + s)] * wx[s];
        u = clip8(acc);
      } else if (!resize_x) {  // vertical only
        int acc = 1 << (kPrecisionBits - 1);
        for (int t = 0; t < cnty[i]; ++t)
          acc += base[(fy[i] + t) * p.frame_row_stride + 3 * fx[j]] * wy[t];
        u = clip8(acc);
      } else if (!vertical_first) {  // horizontal pass, then vertical
        int acc = 1 << (kPrecisionBits - 1);
        for (int t = 0; t < cnty[i]; ++t) {
          const uint8_t* src = base + (fy[i] + t) * p.frame_row_stride;
          int h = 1 << (kPrecisionBits - 1);
          for (int s = 0; s < cntx[j]; ++s) h += src[3 * (fx[j] + s)] * wx[s];
          acc += clip8(h) * wy[t];
        }
        u = clip8(acc);
      } else {  // vertical pass, then horizontal
        int acc = 1 << (kPrecisionBits - 1);
        for (int s = 0; s < cntx[j]; ++s) {
          int vsum = 1 << (kPrecisionBits - 1);
          for (int t = 0; t < cnty[i]; ++t)
            vsum += base[(fy[i] + t) * p.frame_row_stride + 3 * (fx[j] + s)] * wy[t];
          acc += clip8(vsum) * wx[s];
        }
        u = clip8(acc);
      }
    }
    values[e] = normalized(p, c, u);
  }
  __syncthreads();

  // Projection: warp w takes channels d = w, w + warps, ...; lanes split K.
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  const int n_class = p.class_embedding ? 1 : 0;
  const int64_t token = n_class + static_cast<int64_t>(patch);
  for (int d = warp; d < D; d += warps) {
    const float* w = p.weight + static_cast<int64_t>(d) * K;
    float s = 0.0f;
    for (int k = lane; k < K; k += 32) s += values[k] * w[k];
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) s += __shfl_xor_sync(0xffffffffu, s, offset);
    if (lane == 0) {
      if (p.bias) s += p.bias[d];
      if (p.position_embedding) s += p.position_embedding[token * D + d];
      p.out[token * D + d] = s;
    }
  }
  if (patch == 0 && n_class) {  // the class token
    for (int d = threadIdx.x; d < D; d += blockDim.x)
      p.out[d] = p.class_embedding[d] + (p.position_embedding ? p.position_embedding[d] : 0.0f);
  }
}

int ksize_for(int in_size, int out_size) {  // Pillow's ksize, at least 1 (no resampling)
  if (in_size == out_size) return 1;
  const double scale = static_cast<double>(in_size) / out_size;
  return static_cast<int>(std::ceil(2.0 * (scale < 1.0 ? 1.0 : scale))) * 2 + 1;
}

}  // namespace

int patch_embed_cuda(const PatchEmbedParams& p, void* stream) noexcept {
  const int P = p.patch_size;
  if (P < 1 || p.image_width < P || p.image_height < P || p.embed_dim < 1) {
    return cudaErrorInvalidValue;
  }
  const int n_patches = (p.image_height / P) * (p.image_width / P);
  const int ksize_x = ksize_for(p.frame_width, p.resize_width);
  const int ksize_y = ksize_for(p.frame_height, p.resize_height);
  const bool vertical_first = p.pillow13_pass_order && p.resize_width != p.frame_width &&
                              p.resize_height < p.frame_height &&
                              (p.frame_height - p.resize_height) > 2 * (p.frame_width - p.resize_width);
  const size_t smem = sizeof(float) * 3 * P * P + sizeof(int) * P * (ksize_x + ksize_y + 4);
  if (smem > 48 * 1024) return cudaErrorInvalidValue;  // P <= 32 and moderate downscales fit
  if (n_patches == 0) return cudaSuccess;
  patch_embed_kernel<<<n_patches, kThreads, smem, static_cast<cudaStream_t>(stream)>>>(
      p, ksize_x, ksize_y, vertical_first);
  return cudaGetLastError();
}

}  // namespace mmedge

namespace mmedge {
namespace {

// cudaMalloc + cudaMemcpy of n bytes from host `src` (null stays null); errors accumulate in err.
template <typename T>
T* upload(const T* src, size_t n, cudaError_t& err) {
  if (!src || err != cudaSuccess) return nullptr;
  void* dst = nullptr;
  err = cudaMalloc(&dst, n);
  if (err == cudaSuccess) err = cudaMemcpy(dst, src, n, cudaMemcpyHostToDevice);
  return static_cast<T*>(dst);
}

}  // namespace

int patch_embed_cuda_host(const PatchEmbedParams& h) noexcept {
  const int64_t D = h.embed_dim, P = h.patch_size, T = patch_embed_num_tokens(h);
  cudaError_t err = cudaSuccess;
  PatchEmbedParams d = h;
  const size_t frame_bytes = (h.frame_height - 1) * h.frame_row_stride + 3 * h.frame_width;
  d.frame = upload(h.frame, frame_bytes, err);
  d.weight = upload(h.weight, sizeof(float) * D * 3 * P * P, err);
  d.bias = upload(h.bias, sizeof(float) * D, err);
  d.class_embedding = upload(h.class_embedding, sizeof(float) * D, err);
  d.position_embedding = upload(h.position_embedding, sizeof(float) * T * D, err);
  float* out = nullptr;
  if (err == cudaSuccess) err = cudaMalloc(&out, sizeof(float) * T * D);
  d.out = out;
  if (err == cudaSuccess) err = static_cast<cudaError_t>(patch_embed_cuda(d, nullptr));
  if (err == cudaSuccess) err = cudaMemcpy(h.out, out, sizeof(float) * T * D, cudaMemcpyDeviceToHost);
  for (const void* ptr : {static_cast<const void*>(d.frame), static_cast<const void*>(d.weight),
                          static_cast<const void*>(d.bias), static_cast<const void*>(d.class_embedding),
                          static_cast<const void*>(d.position_embedding), static_cast<const void*>(out)}) {
    if (ptr) cudaFree(const_cast<void*>(ptr));
  }
  return err;
}

}  // namespace mmedge
