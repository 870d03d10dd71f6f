// Launch parameters and entry points shared by csrc/slicekit.cpp (checks, dispatch) and the .cu files.
// Every stride is in elements, never bytes; every pointer is a device pointer on the current device.
#pragma once

#include <cstdint>

#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>

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
};

template <typename input_t>
void covariance_accumulate_cuda(const CovarianceParams& params);

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
