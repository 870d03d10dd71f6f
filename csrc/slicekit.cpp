// slicekit._C: op schemas, argument checks and dtype dispatch. The arithmetic lives in the .cu files.
//
// The ops are registered on `import slicekit._C` (static initialisers below) as torch.ops.slicekit.*:
//   covariance_accumulate(Tensor x, Tensor? mask, Tensor(a!) out, bool symmetric=True) -> ()
//   covariance_path(Tensor x) -> str   (which kernel covariance_accumulate runs for x: sm90_wgmma / cublas)
//   rotate_slice(Tensor weight, Tensor q, int k, int dim, ScalarType out_dtype) -> Tensor
//   shortcut_linear(Tensor x, Tensor S, Tensor h, Tensor W, Tensor? bias) -> Tensor
// Each has a CUDA kernel, a Meta kernel (shapes only, so FakeTensor / torch.compile can trace it) and a
// CPU kernel that only explains that CUDA tensors are needed.

#include <Python.h>

#include <string>

#include <ATen/MemoryOverlap.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "slicekit.h"

namespace slicekit {
namespace {

// "float16 tensor of shape [8, 4] and strides [4, 1] on cuda:0", for error messages.
TensorInfo describe(const at::Tensor& t) { return TensorInfo{&t}; }

bool is_float_dtype(at::ScalarType t) {
  return t == at::kHalf || t == at::kBFloat16 || t == at::kFloat || t == at::kDouble;
}

void check_cuda(const char* op, const char* name, const at::Tensor& t, const at::Tensor& ref) {
  SLICEKIT_CHECK(t.is_cuda(), op, ": ", name, " must be a CUDA tensor, got ", describe(t),
              " (the CUDA extension runs CUDA tensors only; use backend='torch' or 'triton' on the CPU)");
  SLICEKIT_CHECK(t.device() == ref.device(), op, ": ", name, " is on ", t.device(), " but the other arguments are on ",
              ref.device());
}

// Leading dimension for cuBLAS of a matrix with unit column stride; a single row may carry any stride.
int64_t row_ld(const at::Tensor& t) { return t.size(0) <= 1 ? std::max<int64_t>(1, t.size(1)) : t.stride(0); }

// A 2-D view cuBLAS can read row by row (unit column stride, rows not overlapping), copying only if needed.
at::Tensor rows_unit_stride(const at::Tensor& t) {
  const bool ok = (t.stride(1) == 1 || t.size(1) <= 1) && (t.size(0) <= 1 || t.stride(0) >= std::max<int64_t>(1, t.size(1)));
  return ok ? t : t.contiguous();
}

// ---------------------------------------------------------------------------------------------
// covariance_accumulate

void check_covariance(const at::Tensor& x, const std::optional<at::Tensor>& mask, const at::Tensor& out) {
  const char* op = "slicekit::covariance_accumulate";
  SLICEKIT_CHECK(x.dim() == 2, op, ": x must be 2-D [N, d], got ", describe(x));
  SLICEKIT_CHECK(is_float_dtype(x.scalar_type()), op, ": x must be float16, bfloat16, float32 or float64, got ",
              describe(x));
  const int64_t n = x.size(0), d = x.size(1);
  SLICEKIT_CHECK(x.stride(1) == 1 || d <= 1, op, ": x must have unit stride along d (x.stride(1) == 1), got ",
              describe(x), "; call .contiguous() first");
  SLICEKIT_CHECK(n <= 1 || x.stride(0) >= d, op, ": x's rows overlap (x.stride(0) < d), got ", describe(x));
  SLICEKIT_CHECK(out.scalar_type() == at::kDouble, op, ": out must be float64 (the running sum), got ", describe(out));
  SLICEKIT_CHECK(out.dim() == 2 && out.size(0) == d && out.size(1) == d, op, ": out must be [", d, ", ", d,
              "] to match x's d = ", d, ", got ", describe(out));
  SLICEKIT_CHECK(at::has_internal_overlap(out) != at::MemOverlap::Yes, op,
              ": out must not be an expanded or self-overlapping view, got ", describe(out));
  SLICEKIT_CHECK(d <= INT32_MAX && (n <= 1 || x.stride(0) <= INT32_MAX), op,
              ": d and x.stride(0) must fit in 32 bits for cuBLAS, got ", describe(x));
  if (mask.has_value()) {
    const at::Tensor& m = *mask;
    SLICEKIT_CHECK(m.scalar_type() == at::kByte || m.scalar_type() == at::kBool, op,
                ": mask must be uint8 (or bool) holding 0/1, got ", describe(m));
    SLICEKIT_CHECK(m.dim() == 1 && m.size(0) == n, op, ": mask must be [N] = [", n, "] to match x, got ", describe(m));
    SLICEKIT_CHECK(m.stride(0) == 1 || n <= 1, op, ": mask must be contiguous, got ", describe(m));
  }
}

void covariance_accumulate_cuda_op(const at::Tensor& x, const std::optional<at::Tensor>& mask, const at::Tensor& out,
                                   bool symmetric) {
  const char* op = "slicekit::covariance_accumulate";
  check_cuda(op, "x", x, x);
  check_cuda(op, "out", out, x);
  if (mask.has_value()) check_cuda(op, "mask", *mask, x);
  check_covariance(x, mask, out);
  if (x.size(0) == 0 || x.size(1) == 0) return;

  const c10::cuda::CUDAGuard guard(x.device());
  CovarianceParams p;
  p.x_ptr = x.data_ptr();
  p.n_rows = x.size(0);
  p.dim = x.size(1);
  p.stride_x_row = x.size(0) <= 1 ? x.size(1) : x.stride(0);
  p.mask_ptr = mask.has_value() ? static_cast<const uint8_t*>(mask->data_ptr()) : nullptr;
  p.out_ptr = out.data_ptr<double>();
  p.stride_out_row = out.stride(0);
  p.stride_out_col = out.stride(1);
  p.mirror = symmetric;
  switch (x.scalar_type()) {
    case at::kHalf: covariance_accumulate_cuda<c10::Half>(p); break;
    case at::kBFloat16: covariance_accumulate_cuda<c10::BFloat16>(p); break;
    case at::kFloat: covariance_accumulate_cuda<float>(p); break;
    case at::kDouble: covariance_accumulate_cuda<double>(p); break;
    default: SLICEKIT_CHECK(false, op, ": unsupported dtype ", dtype_name(x.scalar_type()));
  }
}

std::string covariance_path_cuda_op(const at::Tensor& x) {
  const c10::cuda::CUDAGuard guard(x.device());
  return covariance_path_cuda(x.scalar_type());
}

void covariance_accumulate_meta(const at::Tensor& x, const std::optional<at::Tensor>& mask, const at::Tensor& out, bool) {
  check_covariance(x, mask, out);
}

// ---------------------------------------------------------------------------------------------
// rotate_slice

std::vector<int64_t> check_rotate_slice(const at::Tensor& weight, const at::Tensor& q, int64_t k, int64_t dim,
                                        at::ScalarType out_dtype) {
  const char* op = "slicekit::rotate_slice";
  SLICEKIT_CHECK(dim == 0 || dim == 1, op, ": dim must be 0 (writers, weight [d, n]) or 1 (readers, weight [m, d]), got ",
              dim);
  SLICEKIT_CHECK(weight.dim() == 2, op, ": weight must be 2-D, got ", describe(weight));
  SLICEKIT_CHECK(is_float_dtype(weight.scalar_type()), op,
              ": weight must be float16, bfloat16, float32 or float64, got ", describe(weight));
  SLICEKIT_CHECK(q.dim() == 2, op, ": q must be 2-D [d, >=k], got ", describe(q));
  SLICEKIT_CHECK(q.scalar_type() == at::kFloat || q.scalar_type() == at::kDouble, op,
              ": q must be float32 or float64 (a 16-bit Q loses the basis), got ", describe(q));
  const int64_t d = weight.size(dim);
  SLICEKIT_CHECK(q.size(0) == d, op, ": q has ", q.size(0), " rows but the weight's residual dim (dim ", dim, ") is ", d);
  SLICEKIT_CHECK(k >= 1 && k <= q.size(1), op, ": k = ", k, " outside [1, ", q.size(1), "] (q's columns)");
  SLICEKIT_CHECK(is_float_dtype(out_dtype), op, ": out_dtype must be float16, bfloat16, float32 or float64, got ",
              dtype_name(out_dtype));
  SLICEKIT_CHECK(weight.size(0) <= INT32_MAX && weight.size(1) <= INT32_MAX && k <= INT32_MAX, op,
              ": dimensions must fit in 32 bits for cuBLAS, got ", describe(weight));
  return dim == 1 ? std::vector<int64_t>{weight.size(0), k} : std::vector<int64_t>{k, weight.size(1)};
}

at::Tensor rotate_slice_cuda_op(const at::Tensor& weight_in, const at::Tensor& q, int64_t k, int64_t dim,
                                at::ScalarType out_dtype) {
  const char* op = "slicekit::rotate_slice";
  check_cuda(op, "weight", weight_in, weight_in);
  check_cuda(op, "q", q, weight_in);
  const auto shape = check_rotate_slice(weight_in, q, k, dim, out_dtype);
  at::Tensor out = at::empty(shape, weight_in.options().dtype(out_dtype));
  if (out.numel() == 0) return out;
  const c10::cuda::CUDAGuard guard(weight_in.device());
  if (weight_in.size(dim) == 0) return out.zero_();

  const at::ScalarType wt = weight_in.scalar_type();
  if (out_dtype == at::kFloat || out_dtype == at::kDouble || wt == at::kDouble) {
    rotate_slice_fp64_cuda(weight_in, q, k, dim, out);
    return out;
  }
  // cuBLAS reads either layout; anything else (a doubly strided view) is copied once.
  at::Tensor weight = weight_in;
  const bool row_major = weight.stride(1) == 1 && weight.stride(0) >= std::max<int64_t>(1, weight.size(1));
  const bool col_major = weight.stride(0) == 1 && weight.stride(1) >= std::max<int64_t>(1, weight.size(0));
  if (!row_major && !col_major) weight = weight.contiguous();
  const bool use_row = weight.stride(1) == 1 && weight.stride(0) >= std::max<int64_t>(1, weight.size(1));
  SLICEKIT_CHECK(std::max(weight.stride(0), weight.stride(1)) <= INT32_MAX, op,
              ": the weight's leading stride must fit in 32 bits for cuBLAS, got ", describe(weight));

  RotateSliceParams p;
  p.w_ptr = weight.data_ptr();
  p.w_rows = weight.size(0);
  p.w_cols = weight.size(1);
  p.stride_w_row = use_row ? weight.stride(0) : 1;
  p.stride_w_col = use_row ? 1 : weight.stride(1);
  p.q_ptr = q.data_ptr();
  p.q_is_double = q.scalar_type() == at::kDouble;
  p.d = weight.size(dim);
  p.k = k;
  p.stride_q_row = q.stride(0);
  p.stride_q_col = q.stride(1);
  p.dim = static_cast<int>(dim);
  p.out_ptr = out.data_ptr();
  p.out_dtype = out_dtype;
  switch (wt) {
    case at::kHalf: rotate_slice_split_cuda<c10::Half>(p); break;
    case at::kBFloat16: rotate_slice_split_cuda<c10::BFloat16>(p); break;
    case at::kFloat: rotate_slice_fp32_cuda(p); break;
    default: SLICEKIT_CHECK(false, op, ": unsupported weight dtype ", dtype_name(wt));
  }
  return out;
}

at::Tensor rotate_slice_meta(const at::Tensor& weight, const at::Tensor& q, int64_t k, int64_t dim,
                             at::ScalarType out_dtype) {
  const auto shape = check_rotate_slice(weight, q, k, dim, out_dtype);
  return at::empty(shape, weight.options().dtype(out_dtype));
}

// ---------------------------------------------------------------------------------------------
// shortcut_linear

std::vector<int64_t> check_shortcut_linear(const at::Tensor& x, const at::Tensor& S, const at::Tensor& h,
                                           const at::Tensor& W, const std::optional<at::Tensor>& bias) {
  const char* op = "slicekit::shortcut_linear";
  SLICEKIT_CHECK(x.dim() >= 1 && h.dim() >= 1, op, ": x and h need a feature dim, got x ", describe(x), " and h ",
              describe(h));
  SLICEKIT_CHECK(x.sizes().slice(0, x.dim() - 1) == h.sizes().slice(0, h.dim() - 1), op,
              ": x and h must share their leading dims, got x ", describe(x), " and h ", describe(h));
  SLICEKIT_CHECK(S.dim() == 2 && W.dim() == 2, op, ": S and W must be 2-D, got S ", describe(S), " and W ", describe(W));
  SLICEKIT_CHECK(S.size(0) == x.size(-1) && W.size(1) == h.size(-1) && S.size(1) == W.size(0), op,
              ": shapes do not chain (need S [k_in, k_out], W [k_out, n]): x ", x.sizes(), ", S ", S.sizes(), ", h ",
              h.sizes(), ", W ", W.sizes());
  const at::ScalarType t = x.scalar_type();
  SLICEKIT_CHECK(is_float_dtype(t), op, ": x must be float16, bfloat16, float32 or float64, got ", describe(x));
  SLICEKIT_CHECK(S.scalar_type() == t && h.scalar_type() == t && W.scalar_type() == t, op,
              ": x, S, h and W must share one dtype, got ", dtype_name(t), ", ", dtype_name(S.scalar_type()), ", ",
              dtype_name(h.scalar_type()), ", ", dtype_name(W.scalar_type()));
  if (bias.has_value()) {
    SLICEKIT_CHECK(bias->dim() == 1 && bias->size(0) == W.size(0), op, ": bias must be [k_out] = [", W.size(0),
                "], got ", describe(*bias));
    SLICEKIT_CHECK(bias->scalar_type() == t, op, ": bias must be ", dtype_name(t), " like x, got ", describe(*bias));
  }
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = W.size(0);
  return shape;
}

at::Tensor shortcut_linear_cuda_op(const at::Tensor& x, const at::Tensor& S, const at::Tensor& h, const at::Tensor& W,
                                   const std::optional<at::Tensor>& bias) {
  const char* op = "slicekit::shortcut_linear";
  check_cuda(op, "x", x, x);
  check_cuda(op, "S", S, x);
  check_cuda(op, "h", h, x);
  check_cuda(op, "W", W, x);
  if (bias.has_value()) check_cuda(op, "bias", *bias, x);
  const auto shape = check_shortcut_linear(x, S, h, W, bias);
  at::Tensor y = at::empty(shape, x.options());
  if (y.numel() == 0) return y;
  const c10::cuda::CUDAGuard guard(x.device());

  const at::Tensor x2 = rows_unit_stride(x.reshape({-1, x.size(-1)}));
  const at::Tensor h2 = rows_unit_stride(h.reshape({-1, h.size(-1)}));
  const at::Tensor s2 = rows_unit_stride(S);
  const at::Tensor w2 = rows_unit_stride(W);
  const at::Tensor b = bias.has_value() ? bias->contiguous() : at::Tensor();
  for (const at::Tensor* t : {&x2, &h2, &s2, &w2}) {
    SLICEKIT_CHECK(row_ld(*t) <= INT32_MAX && t->size(0) <= INT32_MAX && t->size(1) <= INT32_MAX, op,
                ": dimensions must fit in 32 bits for cuBLAS, got ", describe(*t));
  }

  ShortcutLinearParams p;
  p.x_ptr = x2.data_ptr();
  p.s_ptr = s2.data_ptr();
  p.h_ptr = h2.data_ptr();
  p.w_ptr = w2.data_ptr();
  p.bias_ptr = b.defined() ? b.data_ptr() : nullptr;
  p.m = x2.size(0);
  p.k_in = x2.size(1);
  p.k_out = w2.size(0);
  p.n = w2.size(1);
  p.stride_x_row = row_ld(x2);
  p.stride_s_row = row_ld(s2);
  p.stride_h_row = row_ld(h2);
  p.stride_w_row = row_ld(w2);
  p.y_ptr = y.data_ptr();
  switch (x.scalar_type()) {
    case at::kHalf: shortcut_linear_cuda<c10::Half>(p); break;
    case at::kBFloat16: shortcut_linear_cuda<c10::BFloat16>(p); break;
    case at::kFloat: shortcut_linear_cuda<float>(p); break;
    case at::kDouble: shortcut_linear_cuda<double>(p); break;
    default: SLICEKIT_CHECK(false, op, ": unsupported dtype ", dtype_name(x.scalar_type()));
  }
  return y;
}

at::Tensor shortcut_linear_meta(const at::Tensor& x, const at::Tensor& S, const at::Tensor& h, const at::Tensor& W,
                                const std::optional<at::Tensor>& bias) {
  return at::empty(check_shortcut_linear(x, S, h, W, bias), x.options());
}

// ---------------------------------------------------------------------------------------------
// CPU: a clear error instead of the dispatcher's "could not run ... with arguments from the CPU backend".

[[noreturn]] void needs_cuda(const char* op, const at::Tensor& t) {
  SLICEKIT_CHECK(false, op, ": the CUDA extension needs CUDA tensors, got ", describe(t),
              "; use slicekit.ops with backend='torch' (or 'triton') for CPU tensors");
}

void covariance_accumulate_cpu(const at::Tensor& x, const std::optional<at::Tensor>&, const at::Tensor&, bool) {
  needs_cuda("slicekit::covariance_accumulate", x);
}
at::Tensor rotate_slice_cpu(const at::Tensor& weight, const at::Tensor&, int64_t, int64_t, at::ScalarType) {
  needs_cuda("slicekit::rotate_slice", weight);
}
at::Tensor shortcut_linear_cpu(const at::Tensor& x, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                               const std::optional<at::Tensor>&) {
  needs_cuda("slicekit::shortcut_linear", x);
}

}  // namespace
}  // namespace slicekit

// A FRAGMENT, not TORCH_LIBRARY: Python-side custom ops in the same namespace (torch.library) must
// not collide with this one-time definition.
TORCH_LIBRARY_FRAGMENT(slicekit, m) {
  m.def("covariance_accumulate(Tensor x, Tensor? mask, Tensor(a!) out, bool symmetric=True) -> ()");
  m.def("covariance_path(Tensor x) -> str");
  m.def("rotate_slice(Tensor weight, Tensor q, int k, int dim, ScalarType out_dtype) -> Tensor");
  m.def("shortcut_linear(Tensor x, Tensor S, Tensor h, Tensor W, Tensor? bias) -> Tensor");
}

TORCH_LIBRARY_IMPL(slicekit, CUDA, m) {
  m.impl("covariance_accumulate", &slicekit::covariance_accumulate_cuda_op);
  m.impl("covariance_path", &slicekit::covariance_path_cuda_op);
  m.impl("rotate_slice", &slicekit::rotate_slice_cuda_op);
  m.impl("shortcut_linear", &slicekit::shortcut_linear_cuda_op);
}

TORCH_LIBRARY_IMPL(slicekit, Meta, m) {
  m.impl("covariance_accumulate", &slicekit::covariance_accumulate_meta);
  m.impl("rotate_slice", &slicekit::rotate_slice_meta);
  m.impl("shortcut_linear", &slicekit::shortcut_linear_meta);
}

TORCH_LIBRARY_IMPL(slicekit, CPU, m) {
  m.impl("covariance_accumulate", &slicekit::covariance_accumulate_cpu);
  m.impl("rotate_slice", &slicekit::rotate_slice_cpu);
  m.impl("shortcut_linear", &slicekit::shortcut_linear_cpu);
}

// The module itself is empty: importing it runs the registrations above.
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C",
                                          "slicekit CUDA ops, registered as torch.ops.slicekit.*", -1, nullptr,
                                          nullptr, nullptr, nullptr, nullptr};
  return PyModule_Create(&module_def);
}
