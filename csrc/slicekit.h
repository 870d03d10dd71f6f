// Launch parameters and entry points shared by csrc/slicekit.cpp (checks, dispatch) and the .cu files.
// Every stride is in elements, never bytes; every pointer is a device pointer on the current device.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <stdexcept>

#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>

struct CUstream_st;  // cudaStream_t, without the CUDA headers (slicekit.cpp is plain C++)

namespace slicekit {

// SLICEKIT_CHECK(cond, parts...): TORCH_CHECK's contract (Python sees a RuntimeError naming the
// problem), but the message is formatted with snprintf into a fixed buffer and thrown as
// std::runtime_error(const char*). Measured on the H200 image (torch 2.11+cu130): a failing
// multi-argument TORCH_CHECK -- or any std::ostringstream message -- in an extension built there
// segfaults, even in a 5-line extension from torch's own load_inline, while
// std::runtime_error("literal") translates cleanly (scripts/diag_cxx_errors.py reproduces it).
// So no iostreams and no std::string on this path.
// torch's Python names for the float dtypes (c10's own names are "Half", "BFloat16", ...).
inline const char* dtype_name(at::ScalarType t) {
  switch (t) {
    case at::kHalf: return "float16";
    case at::kBFloat16: return "bfloat16";
    case at::kFloat: return "float32";
    case at::kDouble: return "float64";
    case at::kByte: return "uint8";
    case at::kBool: return "bool";
    default: return c10::toString(t);
  }
}

struct TensorInfo {
  const at::Tensor* t;
};

class Message {
 public:
  void add(const char* text) { put("%s", text); }
  void add(char c) { put("%c", c); }
  void add(bool b) { put("%s", b ? "true" : "false"); }
  void add(int v) { put("%d", v); }
  void add(unsigned v) { put("%u", v); }
  void add(long v) { put("%ld", v); }
  void add(unsigned long v) { put("%lu", v); }
  void add(long long v) { put("%lld", v); }
  void add(unsigned long long v) { put("%llu", v); }
  void add(double v) { put("%g", v); }
  void add(c10::ScalarType t) { put("%s", c10::toString(t)); }
  void add(c10::IntArrayRef a) {
    add('[');
    for (size_t i = 0; i < a.size(); ++i) put(i ? ", %lld" : "%lld", static_cast<long long>(a[i]));
    add(']');
  }
  void add(c10::Device d) {
    const char* type = d.is_cuda() ? "cuda" : d.is_cpu() ? "cpu" : d.is_meta() ? "meta" : "other";
    add(type);
    if (d.has_index()) put(":%d", static_cast<int>(d.index()));
  }
  void add(const TensorInfo& info) {
    const at::Tensor& t = *info.t;
    add(dtype_name(t.scalar_type()));
    add(" tensor of shape ");
    add(t.sizes());
    add(" and strides ");
    add(t.strides());
    add(" on ");
    add(t.device());
  }
  const char* text() const { return buf_; }

 private:
  template <typename T>
  void put(const char* fmt, T value) {
    if (len_ < sizeof(buf_) - 1) {
      const int n = std::snprintf(buf_ + len_, sizeof(buf_) - len_, fmt, value);
      if (n > 0) len_ = std::min(sizeof(buf_) - 1, len_ + static_cast<size_t>(n));
    }
  }
  char buf_[1024] = {0};
  size_t len_ = 0;
};

template <typename... Args>
[[noreturn]] void fail(const Args&... parts) {
  Message message;
  (message.add(parts), ...);
  throw std::runtime_error(message.text());
}

}  // namespace slicekit

#define SLICEKIT_CHECK(COND, ...)              \
  do {                                         \
    if (!(COND)) ::slicekit::fail(__VA_ARGS__); \
  } while (0)

namespace slicekit {

// out[d, d] (float64) += X^T diag(mask) X for X[n_rows, dim].
struct CovarianceParams {
  const void* x_ptr = nullptr;      // X, row r at x_ptr + r * stride_x_row, unit column stride
  int64_t n_rows = 0;
  int64_t dim = 0;
  int64_t stride_x_row = 0;         // >= dim
  const uint8_t* mask_ptr = nullptr;  // [n_rows] of 0/1, or nullptr (every row counts)
  double* out_ptr = nullptr;
  int64_t stride_out_row = 0;
  int64_t stride_out_col = 0;
  // Tuning (0 = default; SLICEKIT_COV_* environment variables override the defaults):
  int64_t chunk_rows = 0;           // rows per GEMM: bounds the fp32 tensor-core accumulation length
  int64_t flush_rows = 0;           // rows summed in fp32 (GEMM epilogue, round-to-nearest) before the float64 add
  int64_t block = 0;                // side of the square blocks that tile the upper triangle
  bool mirror = true;               // false: only the upper triangle (diagonal included) must be updated
};

template <typename input_t>
void covariance_accumulate_cuda(const CovarianceParams& params);

// Which implementation covariance_accumulate_cuda runs for `dtype` on the current device:
// "sm90_wgmma" or "cublas".
const char* covariance_path_cuda(c10::ScalarType dtype);

// The Hopper wgmma kernel (covariance_sm90.cu) for 16-bit X with 16-byte aligned rows and no mask.
namespace sm90 {
// Rows per launch: bounds the fp32 sums of chunk results in registers before float64 takes them.
constexpr int64_t kLaunchRows = 32768;
// Rows between promotions of the MMA accumulator (covariance_sm90.cu: error bound and timings).
constexpr int64_t kChunkRows = 192;
// Whether `device` is an sm_90 GPU, this build holds sm_90a code, and SLICEKIT_COV_SM90 != 0.
bool usable(int device);
// out (float64, strides in elements) += X^T X over `rows` rows of X (16-byte aligned rows, `ld` elements
// apart), on `stream`, which must be the device's current stream (the tail form's workspace comes from
// torch's caching allocator on it).
void launch(const void* x, int64_t rows, int64_t d, int64_t ld, bool bf16, double* out, int64_t so_row, int64_t so_col,
            bool mirror, int64_t chunk_rows, int device, CUstream_st* stream);
}  // namespace sm90

// out = (W Q)[:, :k] (dim=1, W [rows, d]) or (Q^T W)[:k, :] (dim=0, W [d, cols]), rounded once.
struct RotateSliceParams {
  const void* w_ptr = nullptr;
  int64_t w_rows = 0;
  int64_t w_cols = 0;
  int64_t stride_w_row = 0;         // one of the two weight strides is 1
  int64_t stride_w_col = 0;
  const void* q_ptr = nullptr;      // Q [d, >= k], float32 or float64, any strides
  bool q_is_double = false;
  int64_t d = 0;                    // the residual dimension: w_cols for dim=1, w_rows for dim=0
  int64_t k = 0;
  int64_t stride_q_row = 0;
  int64_t stride_q_col = 0;
  int dim = 1;
  void* out_ptr = nullptr;          // contiguous [w_rows, k] (dim=1) or [k, w_cols] (dim=0)
  c10::ScalarType out_dtype = c10::ScalarType::Half;  // float16 or bfloat16 on the tensor-core paths
};

// 16-bit weights: Q split into hi + lo in the weight's dtype, two tensor-core GEMMs into fp32, one rounding.
template <typename weight_t>
void rotate_slice_split_cuda(const RotateSliceParams& params);

// float32 weights, 16-bit output: one fp32 GEMM with TF32 off, one rounding.
void rotate_slice_fp32_cuda(const RotateSliceParams& params);

// float32/float64 output or float64 weights: the product in float64 (DGEMM), one rounding.
void rotate_slice_fp64_cuda(const at::Tensor& weight, const at::Tensor& q, int64_t k, int64_t dim, const at::Tensor& out);

// y[M, k_out] = x[M, k_in] S[k_in, k_out] + h[M, n] W[k_out, n]^T (+ bias[k_out]), all one dtype.
struct ShortcutLinearParams {
  const void* x_ptr = nullptr;
  const void* s_ptr = nullptr;
  const void* h_ptr = nullptr;
  const void* w_ptr = nullptr;
  const void* bias_ptr = nullptr;   // nullptr: no bias
  int64_t m = 0;
  int64_t k_in = 0;
  int64_t k_out = 0;
  int64_t n = 0;
  int64_t stride_x_row = 0;         // all four matrices have unit column stride
  int64_t stride_s_row = 0;
  int64_t stride_h_row = 0;
  int64_t stride_w_row = 0;
  void* y_ptr = nullptr;            // contiguous [m, k_out]
};

template <typename scalar_t>
void shortcut_linear_cuda(const ShortcutLinearParams& params);

}  // namespace slicekit
