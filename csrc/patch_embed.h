// Fused image preprocessing + patch embedding: a camera frame (uint8 RGB, any size) in, the vision
// tower's input tokens out, in one pass with no float copy of the image. The stages, and the
// reference semantics (mmedge.preprocess.ImagePreprocessor, i.e. transformers' CLIP/SigLIP
// image processors on PIL):
//   1. resize with PIL's BICUBIC (Pillow's ImagingResample, 8-bit fixed point, two passes each
//      rounded and clipped to uint8, horizontal first unless Pillow 13's rule picks vertical
//      first): the pixels equal Image.resize's exactly;
//   2. center crop (transformers' rule: start (H - h) // 2, zero padding where the image is smaller);
//   3. rescale and normalize per channel, float32(float32(u8 * rescale) - mean) / std as numpy does;
//   4. patchify and project by the patch-embedding conv weights [D, 3, P, P] (+ bias), add the class
//      token and position embeddings where the family has them.
// Only the output pixels that survive the crop are computed. Which resize size and crop a family
// uses is decided by the caller (mmedge.kernels computes them with mmedge.preprocess's rule).
// Not here: decoding image files, the transformer layers after the patch embedding.
//
// patch_embed_cpu is the reference; patch_embed_cuda (csrc/cuda/patch_embed.cu) takes the same
// parameters with device pointers.
#pragma once

#include <cstdint>

namespace mmedge {

struct PatchEmbedParams {
  // The frame, RGB uint8: frame[y][x][c] = frame[y * frame_row_stride + x * 3 + c].
  const uint8_t* frame = nullptr;
  int frame_height = 0;
  int frame_width = 0;
  int64_t frame_row_stride = 0;  // bytes from one row to the next, >= 3 * frame_width

  // Size after the bicubic resize; equal to the frame's size means no resize.
  int resize_height = 0;
  int resize_width = 0;
  // The order of Pillow's two passes: true for Pillow >= 13 (vertical first when the height shrinks
  // by more than twice as many pixels as the width), false for older Pillow (always horizontal
  // first). The caller passes what the installed Pillow does.
  bool pillow13_pass_order = true;

  // Size after the center crop = the model's image size. Equal to the resize size means no crop.
  // The patches are a stride-P conv's: (image_height / P) x (image_width / P), rounded down, the
  // leftover rows and columns unused (SigLIP so400m: 384 / 14 -> 27 x 27).
  int image_height = 0;
  int image_width = 0;

  // Per-channel value of a pixel u (padding pixels are u = 0):
  //   v = do_rescale ? float(double(u) * rescale_factor) : float(u)
  //   v = do_normalize ? (v - mean[c]) / std[c] : v        (float32 arithmetic)
  bool do_rescale = true;
  double rescale_factor = 1.0 / 255.0;
  bool do_normalize = true;
  float mean[3] = {0.0f, 0.0f, 0.0f};
  float std[3] = {1.0f, 1.0f, 1.0f};

  int patch_size = 0;  // P
  int embed_dim = 0;   // D

  // Conv2d weight [D, 3, P, P]: weight[d][c][i][j] = weight[((d * 3 + c) * P + i) * P + j].
  const float* weight = nullptr;
  // bias[d], or null (CLIP's patch conv has none, SigLIP's has one).
  const float* bias = nullptr;
  // class_embedding[d], or null: with it, token 0 is the class token (CLIP).
  const float* class_embedding = nullptr;
  // position_embedding[t][d] = position_embedding[t * D + d] for every output token t, or null.
  const float* position_embedding = nullptr;

  // Output tokens: out[t][d] = out[t * D + d], t = n_class + py * (image_width / P) + px where
  // n_class is 1 with a class embedding, else 0; (py, px) is the patch's row and column.
  float* out = nullptr;

  int num_threads = 0;  // 0: OpenMP's default
};

// n_class + (image_height / P) * (image_width / P), rounded down.
int64_t patch_embed_num_tokens(const PatchEmbedParams& p) noexcept;

// Runs the four stages above on the CPU. Trusts its parameters (the bindings check them); allocates
// only small per-thread buffers (resample coefficients, a few rows of pixels, one block of patches).
void patch_embed_cpu(const PatchEmbedParams& p);

// The same on a CUDA device: every pointer is a device pointer, the work is queued on `stream` (a
// cudaStream_t; null is the default stream) and nothing is synchronized. Returns 0 or a cudaError_t.
// Only in builds with MMEDGE_WITH_CUDA.
int patch_embed_cuda(const PatchEmbedParams& p, void* stream) noexcept;

// Test path for patch_embed_cuda on host memory: copies the inputs to the device, runs, copies out
// back and synchronizes. Returns 0 or a cudaError_t. Only with MMEDGE_WITH_CUDA.
int patch_embed_cuda_host(const PatchEmbedParams& host_params) noexcept;

}  // namespace mmedge
