// The pybind11 module `mmedge._C`, and the only file that includes pybind11. Bindings stay thin:
// check arguments at the boundary, release the GIL, call into mmedge_core. Python code reaches this
// module through mmedge.native and mmedge.kernels; its stub is python/mmedge/_C.pyi.
//
// Kernel entry points take numpy arrays and never copy them: a wrong dtype is a TypeError, a wrong
// shape, layout or a read-only output a ValueError, each naming the argument. The kernels then
// trust what they get.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <cmath>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "attention.h"
#include "cpu_simd.h"
#include "cuda/device_info.h"
#include "patch_embed.h"
#include "runtime_info.h"

namespace py = pybind11;

namespace {

std::string shape_str(const py::array& a) {
  std::string s = "(";
  for (py::ssize_t i = 0; i < a.ndim(); ++i) {
    if (i) s += ", ";
    s += std::to_string(a.shape(i));
  }
  return s + (a.ndim() == 1 ? ",)" : ")");
}

[[noreturn]] void bad_value(const std::string& name, const std::string& what) {
  throw py::value_error("argument '" + name + "': " + what);
}

// A numpy dtype a binding accepts: its type number and the name errors use.
struct DType {
  int num;  // NPY_TYPES: NPY_UBYTE 2, NPY_USHORT 4, NPY_FLOAT 11, NPY_HALF 23
  const char* name;
};
constexpr DType kUInt8{2, "uint8"};
constexpr DType kFloat32{11, "float32"};
constexpr DType kFloat16{23, "float16"};
constexpr DType kBFloat16Bits{4, "uint16 (bfloat16 bit patterns)"};

// `obj` as a numpy array of dtype `dt` (native byte order) with `ndim` dimensions, or a
// TypeError/ValueError naming the argument.
py::array typed(const py::handle& obj, const std::string& name, int ndim, DType dt) {
  if (!py::isinstance<py::array>(obj)) {
    throw py::type_error("argument '" + name + "' must be a numpy.ndarray of " + dt.name +
                         ", not " + std::string(py::str(py::type::of(obj).attr("__name__"))));
  }
  py::array a = py::reinterpret_borrow<py::array>(obj);
  if (a.dtype().num() != dt.num || !a.dtype().attr("isnative").cast<bool>()) {
    throw py::type_error("argument '" + name + "' must have dtype " + dt.name + ", got " +
                         std::string(py::str(a.dtype())));
  }
  if (a.ndim() != ndim) {
    bad_value(name, "expected " + std::to_string(ndim) + " dimensions, got shape " + shape_str(a));
  }
  return a;
}

void require_c_contiguous(const py::array& a, const std::string& name) {
  if (!(a.flags() & py::array::c_style)) {
    bad_value(name, "must be C-contiguous (np.ascontiguousarray); got strides " +
                        std::string(py::str(py::cast(std::vector<py::ssize_t>(
                            a.strides(), a.strides() + a.ndim())))));
  }
}

// Every stride a non-negative multiple of the element size, and the last axis contiguous.
void require_rows_contiguous(const py::array& a, const std::string& name) {
  const py::ssize_t item = a.itemsize();
  for (py::ssize_t i = 0; i < a.ndim(); ++i) {
    if (a.strides(i) < 0 || a.strides(i) % item != 0) {
      bad_value(name, "needs non-negative strides that are multiples of the element size");
    }
  }
  if (a.shape(a.ndim() - 1) > 1 && a.strides(a.ndim() - 1) != item) {
    bad_value(name, "its last axis must be contiguous (stride " + std::to_string(item) +
                        " bytes), got " + std::to_string(a.strides(a.ndim() - 1)));
  }
}

void require_writeable(const py::array& a, const std::string& name) {
  if (!a.writeable()) bad_value(name, "is read-only; pass a writeable array");
}

int64_t stride_elems(const py::array& a, int axis) { return a.strides(axis) / a.itemsize(); }

// The CUDA kernels on host arrays (csrc/cuda/*.cu `*_cuda_host`): test and benchmark paths.
template <typename Params>
void run_cuda_host(const Params& p) {
#ifdef MMEDGE_WITH_CUDA
  int err;
  {
    py::gil_scoped_release release;
    if constexpr (std::is_same_v<Params, mmedge::AttentionParams>) {
      err = mmedge::attention_cuda_host(p);
    } else {
      err = mmedge::patch_embed_cuda_host(p);
    }
  }
  if (err != 0) throw std::runtime_error("CUDA kernel failed with cudaError_t " + std::to_string(err));
#else
  (void)p;
  throw std::runtime_error("this build of mmedge._C has no CUDA (built with MMEDGE_CUDA=OFF or without nvcc)");
#endif
}

// ---- patch embedding --------------------------------------------------------------------------

py::array patch_embed_impl(const py::object& frame_obj, int resize_height, int resize_width,
                      int image_height, int image_width, bool do_rescale, double rescale_factor,
                      bool do_normalize, std::array<float, 3> mean, std::array<float, 3> std_,
                      const py::object& weight_obj, const py::object& bias_obj,
                      const py::object& class_obj, const py::object& pos_obj,
                      const py::object& out_obj, int num_threads, bool pillow13_pass_order,
                      bool cuda = false) {
  py::array frame = typed(frame_obj, "frame", 3, kUInt8);
  if (frame.shape(2) != 3) bad_value("frame", "must be H x W x 3 (RGB), got " + shape_str(frame));
  if (frame.shape(0) < 1 || frame.shape(1) < 1) bad_value("frame", "is empty: " + shape_str(frame));
  if (frame.strides(2) != 1 || frame.strides(1) != 3 || frame.strides(0) < 3 * frame.shape(1)) {
    bad_value("frame", "pixels must be packed RGB (strides (row, 3, 1)); use np.ascontiguousarray");
  }
  py::array weight = typed(weight_obj, "weight", 4, kFloat32);
  require_c_contiguous(weight, "weight");
  const int D = static_cast<int>(weight.shape(0));
  const int P = static_cast<int>(weight.shape(2));
  if (weight.shape(1) != 3 || weight.shape(3) != P || P < 1 || D < 1) {
    bad_value("weight", "must be the patch conv's [D, 3, P, P], got " + shape_str(weight));
  }
  if (resize_height < 1 || resize_width < 1) bad_value("resize", "sizes must be positive");
  if (image_height < P || image_width < P) {
    bad_value("image_size", "(" + std::to_string(image_height) + ", " + std::to_string(image_width) +
                                ") must be at least the patch size " + std::to_string(P));
  }
  for (int c = 0; c < 3; ++c) {
    if (do_normalize && std_[c] == 0.0f) bad_value("std", "must be non-zero");
  }

  mmedge::PatchEmbedParams p;
  p.frame = static_cast<const uint8_t*>(frame.data());
  p.frame_height = static_cast<int>(frame.shape(0));
  p.frame_width = static_cast<int>(frame.shape(1));
  p.frame_row_stride = frame.strides(0);
  p.resize_height = resize_height;
  p.resize_width = resize_width;
  p.pillow13_pass_order = pillow13_pass_order;
  p.image_height = image_height;
  p.image_width = image_width;
  p.do_rescale = do_rescale;
  p.rescale_factor = rescale_factor;
  p.do_normalize = do_normalize;
  for (int c = 0; c < 3; ++c) {
    p.mean[c] = mean[c];
    p.std[c] = std_[c];
  }
  p.patch_size = P;
  p.embed_dim = D;
  p.weight = static_cast<const float*>(weight.data());

  py::array bias, cls, pos;
  if (!bias_obj.is_none()) {
    bias = typed(bias_obj, "bias", 1, kFloat32);
    require_c_contiguous(bias, "bias");
    if (bias.shape(0) != D) bad_value("bias", "must be [D] = [" + std::to_string(D) + "], got " + shape_str(bias));
    p.bias = static_cast<const float*>(bias.data());
  }
  if (!class_obj.is_none()) {
    cls = typed(class_obj, "class_embedding", 1, kFloat32);
    require_c_contiguous(cls, "class_embedding");
    if (cls.shape(0) != D) bad_value("class_embedding", "must be [D] = [" + std::to_string(D) + "], got " + shape_str(cls));
    p.class_embedding = static_cast<const float*>(cls.data());
  }
  const int64_t n_tokens = mmedge::patch_embed_num_tokens(p);
  const std::string tokens_shape =
      "[" + std::to_string(n_tokens) + ", " + std::to_string(D) + "]";
  if (!pos_obj.is_none()) {
    pos = typed(pos_obj, "position_embedding", 2, kFloat32);
    require_c_contiguous(pos, "position_embedding");
    if (pos.shape(0) != n_tokens || pos.shape(1) != D) {
      bad_value("position_embedding", "must be [tokens, D] = " + tokens_shape + ", got " + shape_str(pos));
    }
    p.position_embedding = static_cast<const float*>(pos.data());
  }
  py::array out;
  if (out_obj.is_none()) {
    out = py::array_t<float>({static_cast<py::ssize_t>(n_tokens), static_cast<py::ssize_t>(D)});
  } else {
    out = typed(out_obj, "out", 2, kFloat32);
    require_c_contiguous(out, "out");
    require_writeable(out, "out");
    if (out.shape(0) != n_tokens || out.shape(1) != D) {
      bad_value("out", "must be [tokens, D] = " + tokens_shape + ", got " + shape_str(out));
    }
  }
  p.out = static_cast<float*>(out.mutable_data());
  p.num_threads = num_threads;
  if (cuda) {
    run_cuda_host(p);
  } else {
    py::gil_scoped_release release;
    mmedge::patch_embed_cpu(p);
  }
  return out;
}

// ---- attention --------------------------------------------------------------------------------

// Builds the parameters from q, k, v, out (and mask) after checking them all.
mmedge::AttentionParams attention_params(const py::object& q_obj, const py::object& k_obj,
                                         const py::object& v_obj, const py::object& out_obj,
                                         const py::object& mask_obj, int kv_len,
                                         std::optional<float> scale, bool causal, int num_threads,
                                         std::vector<py::array>& keep, DType dt = kFloat32) {
  py::array q = typed(q_obj, "q", 4, dt);
  py::array k = typed(k_obj, "k", 4, dt);
  py::array v = typed(v_obj, "v", 4, dt);
  py::array out = typed(out_obj, "out", 4, dt);
  for (auto& [a, name] : {std::pair{q, "q"}, {k, "k"}, {v, "v"}, {out, "out"}}) {
    require_rows_contiguous(a, name);
  }
  require_writeable(out, "out");
  const auto B = q.shape(0), H = q.shape(1), T = q.shape(2), D = q.shape(3);
  const auto Hkv = k.shape(1), cap = k.shape(2);
  if (B < 1 || H < 1 || T < 1 || D < 1) bad_value("q", "must be non-empty [batch, heads, queries, head_dim], got " + shape_str(q));
  if (k.shape(0) != B || k.shape(3) != D || Hkv < 1) {
    bad_value("k", "must be [batch, kv_heads, keys, head_dim] with batch " + std::to_string(B) +
                       " and head_dim " + std::to_string(D) + " as q, got " + shape_str(k));
  }
  if (H % Hkv != 0) {
    bad_value("k", "its " + std::to_string(Hkv) + " kv heads must divide q's " + std::to_string(H) + " heads");
  }
  if (v.shape(0) != B || v.shape(1) != Hkv || v.shape(2) != cap || v.shape(3) != D) {
    bad_value("v", "must have k's shape " + shape_str(k) + ", got " + shape_str(v));
  }
  if (out.shape(0) != B || out.shape(1) != H || out.shape(2) != T || out.shape(3) != D) {
    bad_value("out", "must have q's shape " + shape_str(q) + ", got " + shape_str(out));
  }
  if (kv_len < 0) kv_len = static_cast<int>(cap);
  if (kv_len < 1 || kv_len > cap) {
    bad_value("kv_len", std::to_string(kv_len) + " must be in [1, " + std::to_string(cap) +
                            "] (the keys in k)");
  }
  mmedge::AttentionParams p;
  p.q = q.data();
  p.q_batch_stride = stride_elems(q, 0), p.q_head_stride = stride_elems(q, 1), p.q_row_stride = stride_elems(q, 2);
  p.k = k.data();
  p.k_batch_stride = stride_elems(k, 0), p.k_head_stride = stride_elems(k, 1), p.k_row_stride = stride_elems(k, 2);
  p.v = v.data();
  p.v_batch_stride = stride_elems(v, 0), p.v_head_stride = stride_elems(v, 1), p.v_row_stride = stride_elems(v, 2);
  p.out = out.mutable_data();
  p.o_batch_stride = stride_elems(out, 0), p.o_head_stride = stride_elems(out, 1), p.o_row_stride = stride_elems(out, 2);
  if (!mask_obj.is_none()) {
    // 2-D [queries, keys] or 4-D [batch, heads, queries, keys] (anything else: "expected 4").
    const bool two_d = py::isinstance<py::array>(mask_obj) &&
                       py::reinterpret_borrow<py::array>(mask_obj).ndim() == 2;
    const int nd = two_d ? 2 : 4;
    py::array mask = typed(mask_obj, "mask", nd, kFloat32);
    require_rows_contiguous(mask, "mask");
    const auto rows = mask.shape(nd - 2), cols = mask.shape(nd - 1);
    const bool ok_tail = rows == T && cols >= kv_len;
    const bool ok_lead = nd == 2 || ((mask.shape(0) == 1 || mask.shape(0) == B) &&
                                     (mask.shape(1) == 1 || mask.shape(1) == H));
    if (!ok_tail || !ok_lead) {
      bad_value("mask", "must be [queries, >= kv_len] or [batch or 1, heads or 1, queries, >= kv_len] "
                        "= [" + std::to_string(B) + "|1, " + std::to_string(H) + "|1, " +
                        std::to_string(T) + ", >=" + std::to_string(kv_len) + "], got " + shape_str(mask));
    }
    p.mask = static_cast<const float*>(mask.data());
    p.m_row_stride = stride_elems(mask, nd - 2);
    if (nd == 4) {
      p.m_batch_stride = mask.shape(0) == 1 ? 0 : stride_elems(mask, 0);
      p.m_head_stride = mask.shape(1) == 1 ? 0 : stride_elems(mask, 1);
    }
    keep.push_back(mask);
  }
  p.batch = static_cast<int>(B);
  p.num_heads = static_cast<int>(H);
  p.num_kv_heads = static_cast<int>(Hkv);
  p.q_len = static_cast<int>(T);
  p.kv_len = kv_len;
  p.head_dim = static_cast<int>(D);
  p.scale = scale ? *scale : 1.0f / std::sqrt(static_cast<float>(D));
  p.causal = causal;
  p.num_threads = num_threads;
  keep.insert(keep.end(), {q, k, v, out});
  return p;
}

int64_t attention_scratch_size(int batch, int num_heads, int num_kv_heads, int q_len, int head_dim,
                               int num_threads) {
  if (batch < 1 || num_heads < 1 || num_kv_heads < 1 || q_len < 1 || head_dim < 1 ||
      num_heads % num_kv_heads) {
    throw py::value_error("attention_scratch_size: sizes must be positive and num_kv_heads must "
                          "divide num_heads");
  }
  mmedge::AttentionParams p;
  p.batch = batch, p.num_heads = num_heads, p.num_kv_heads = num_kv_heads, p.q_len = q_len;
  p.kv_len = 1, p.head_dim = head_dim, p.num_threads = num_threads;
  return mmedge::attention_scratch_floats(p);
}

py::object attention(const py::object& q, const py::object& k, const py::object& v,
                     const py::object& out, const py::object& scratch_obj,
                     const py::object& mask, int kv_len, std::optional<float> scale, bool causal,
                     int num_threads) {
  std::vector<py::array> keep;
  mmedge::AttentionParams p =
      attention_params(q, k, v, out, mask, kv_len, scale, causal, num_threads, keep);
  const int64_t need = mmedge::attention_scratch_floats(p);
  py::array scratch;
  if (scratch_obj.is_none()) {
    scratch = py::array_t<float>(static_cast<py::ssize_t>(need));
  } else {
    scratch = typed(scratch_obj, "scratch", 1, kFloat32);
    require_c_contiguous(scratch, "scratch");
    require_writeable(scratch, "scratch");
    if (scratch.shape(0) < need) {
      bad_value("scratch", "needs at least " + std::to_string(need) +
                               " float32 (attention_scratch_size), got " + std::to_string(scratch.shape(0)));
    }
  }
  p.scratch = static_cast<float*>(scratch.mutable_data());
  {
    py::gil_scoped_release release;
    mmedge::attention_cpu(p);
  }
  return out;
}


py::object attention_cuda_host(const py::object& q, const py::object& k, const py::object& v,
                               const py::object& out, const py::object& mask, int kv_len,
                               std::optional<float> scale, bool causal) {
  DType dt = kFloat32;
  mmedge::AttentionDtype dtype = mmedge::AttentionDtype::kFloat32;
  if (py::isinstance<py::array>(q)) {
    const int num = py::reinterpret_borrow<py::array>(q).dtype().num();
    if (num == kFloat16.num) dt = kFloat16, dtype = mmedge::AttentionDtype::kFloat16;
    if (num == kBFloat16Bits.num) dt = kBFloat16Bits, dtype = mmedge::AttentionDtype::kBFloat16;
  }
  std::vector<py::array> keep;
  mmedge::AttentionParams p =
      attention_params(q, k, v, out, mask, kv_len, scale, causal, 0, keep, dt);
  p.dtype = dtype;
  run_cuda_host(p);
  return out;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "mmedge native library (private: use mmedge.native and mmedge.kernels).";

  m.attr("__version__") = mmedge::version();
  m.attr("built_with_cuda") = mmedge::built_with_cuda();

  // The first CUDA call loads the driver and can take a while: let other threads run meanwhile.
  m.def("cuda_available", &mmedge::cuda_available, py::call_guard<py::gil_scoped_release>(),
        "True when this build has CUDA and the driver reports at least one device.");
  m.def("cuda_device_count", &mmedge_cuda_device_count, py::call_guard<py::gil_scoped_release>(),
        "Number of usable CUDA devices; 0 without a CUDA build, the NVIDIA driver, or a GPU.");
  m.def("cpu_simd_isa", &mmedge::cpu::simd_isa,
        "The instruction set the CPU kernels run with here: 'avx512', 'avx2' or 'generic'.");

  m.def(
      "patch_embed",
      [](const py::object& frame, int rh, int rw, int ih, int iw, bool do_rescale, double rescale,
         bool do_normalize, std::array<float, 3> mean, std::array<float, 3> std_,
         const py::object& weight, const py::object& bias, const py::object& cls,
         const py::object& pos, const py::object& out, int num_threads, bool pillow13_pass_order) {
        return patch_embed_impl(frame, rh, rw, ih, iw, do_rescale, rescale, do_normalize, mean,
                                std_, weight, bias, cls, pos, out, num_threads,
                                pillow13_pass_order, false);
      },
      py::arg("frame"), py::arg("resize_height"),
        py::arg("resize_width"), py::arg("image_height"), py::arg("image_width"),
        py::arg("do_rescale"), py::arg("rescale_factor"), py::arg("do_normalize"), py::arg("mean"),
        py::arg("std"), py::arg("weight"), py::arg("bias") = py::none(),
        py::arg("class_embedding") = py::none(), py::arg("position_embedding") = py::none(),
        py::arg("out") = py::none(), py::arg("num_threads") = 0,
        py::arg("pillow13_pass_order") = true,
        "Fused bicubic resize (PIL-exact) + center crop + normalize + patch embedding on the CPU; "
        "returns float32 [tokens, D] (`out` when given).");

  m.def("attention_scratch_size", &attention_scratch_size, py::arg("batch"), py::arg("num_heads"),
        py::arg("num_kv_heads"), py::arg("q_len"), py::arg("head_dim"), py::arg("num_threads") = 0,
        "Float32 elements of scratch `attention` needs for these shapes.");
  m.def("attention", &attention, py::arg("q"), py::arg("k"), py::arg("v"), py::arg("out"),
        py::arg("scratch") = py::none(), py::arg("mask") = py::none(), py::arg("kv_len") = -1,
        py::arg("scale") = py::none(), py::arg("causal") = false, py::arg("num_threads") = 0,
        "Fused attention on the CPU, float32, into `out`; returns `out`.");

  // CUDA kernels on host arrays (copy in, run, copy out): for tests and benchmarks.
  m.def(
      "patch_embed_cuda_host",
      [](const py::object& frame, int rh, int rw, int ih, int iw, bool do_rescale, double rescale,
         bool do_normalize, std::array<float, 3> mean, std::array<float, 3> std_,
         const py::object& weight, const py::object& bias, const py::object& cls,
         const py::object& pos, const py::object& out, bool pillow13_pass_order) {
        return patch_embed_impl(frame, rh, rw, ih, iw, do_rescale, rescale, do_normalize, mean, std_,
                           weight, bias, cls, pos, out, 0, pillow13_pass_order, true);
      },
      py::arg("frame"), py::arg("resize_height"), py::arg("resize_width"),
      py::arg("image_height"), py::arg("image_width"), py::arg("do_rescale"),
      py::arg("rescale_factor"), py::arg("do_normalize"), py::arg("mean"), py::arg("std"),
      py::arg("weight"), py::arg("bias") = py::none(), py::arg("class_embedding") = py::none(),
      py::arg("position_embedding") = py::none(), py::arg("out") = py::none(),
      py::arg("pillow13_pass_order") = true,
      "patch_embed on the GPU from host arrays (copies in and out; synchronizes).");
  m.def("attention_cuda_host", &attention_cuda_host, py::arg("q"), py::arg("k"), py::arg("v"),
        py::arg("out"), py::arg("mask") = py::none(), py::arg("kv_len") = -1,
        py::arg("scale") = py::none(), py::arg("causal") = false,
        "attention on the GPU from host arrays, float32, float16 or bfloat16 bits in uint16 "
        "(copies in and out; synchronizes).");
}
