// Rotate-and-slice of one weight: out = (W Q)[:, :k] (dim=1) or (Q^T W)[:k, :] (dim=0), rounded once.
//
// Equation (16-bit weights): Q[:, :k] = Q_hi + 2^-s Q_lo with Q_hi = round16(Q) and
// Q_lo = round16(2^s (Q - Q_hi)), both in the weight's dtype; out = round(W Q_hi + 2^-s (W Q_lo)),
// both products on tensor cores with fp32 accumulation into one fp32 buffer (beta = 1), then a
// single rounding to the output dtype. Q_hi + 2^-s Q_lo carries 22 (fp16) / 16 (bf16) bits of Q, so
// the product keeps Q's precision and the only rounding that matters is the final one.
// The power-of-two scale 2^s lifts Q_lo out of fp16's subnormal range (|Q_lo| ~ 2^-12 |Q|, and the
// entries of an orthogonal d x d Q are ~ d^-1/2) and is undone exactly by alpha = 2^-s.
//
// Trade-off: twice the tensor-core FLOPs of a plain 16-bit GEMM, and an fp32 buffer of the output's
// size. W @ Q_hi alone (Q rounded to 11 bits) leaves ~43% of fp16 outputs off the correctly rounded
// value with 1.4x its Frobenius error; the split leaves ~0.3% and 1.00x (CPU emulation, W 257 x 4096,
// k = 3072, fp32 sums rounded to nearest). fp32 weights with a 16-bit output use one fp32 GEMM with
// TF32 off (error ~1e-7, far below a 16-bit rounding; TF32 would round W and Q to 11 bits, and a
// 3xbf16 split would put the sums back on the tensor cores' fp32 accumulator for no gain in a path
// that runs once per model). float32/float64 outputs need the float64 product to round once
// correctly, so they take DGEMM.

#include <type_traits>

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>

#include "cuda_utils.cuh"
#include "slicekit.h"

namespace slicekit {
namespace {

constexpr int kThreads = 256;

int64_t grid_for(int64_t n) { return std::max<int64_t>(1, std::min<int64_t>(ceil_div(n, kThreads), 65535 * 8)); }

template <typename T>
struct alignas(4 * sizeof(T)) Pack4 {
  T v[4];
};

// Q[:, :k] (any strides, fp32/fp64) -> Q_hi, Q_lo contiguous [d, k] in the weight's 16-bit dtype.
template <typename q_t, typename w_t>
__global__ void split_q_kernel(const q_t* __restrict__ q, int64_t sq_row, int64_t sq_col, int64_t d, int64_t k,
                               double lo_scale, w_t* __restrict__ hi, w_t* __restrict__ lo) {
  const int64_t total = d * k;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total; idx += step) {
    const int64_t i = idx / k;
    const int64_t j = idx - i * k;
    const double v = static_cast<double>(q[i * sq_row + j * sq_col]);
    const w_t h = static_cast<w_t>(static_cast<float>(v));
    // v - h is exact in double (h is v rounded to 11 or 8 bits), so Q_lo is the exact remainder rounded once.
    const double rest = (v - static_cast<double>(static_cast<float>(h))) * lo_scale;
    hi[idx] = h;
    lo[idx] = static_cast<w_t>(static_cast<float>(rest));
  }
}

// Q[:, :k] (any strides) -> contiguous fp32 [d, k] for the fp32-weight path.
template <typename q_t>
__global__ void gather_q_kernel(const q_t* __restrict__ q, int64_t sq_row, int64_t sq_col, int64_t d, int64_t k,
                                float* __restrict__ dst) {
  const int64_t total = d * k;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total; idx += step) {
    const int64_t i = idx / k;
    const int64_t j = idx - i * k;
    dst[idx] = static_cast<float>(q[i * sq_row + j * sq_col]);
  }
}

// The single rounding: fp32 accumulator -> output dtype, four elements per step.
template <typename out_t>
__global__ void round_out_kernel(const float* __restrict__ src, int64_t n, out_t* __restrict__ dst) {
  const int64_t n4 = n / 4;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t start = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  for (int64_t i = start; i < n4; i += step) {
    const float4 v = reinterpret_cast<const float4*>(src)[i];
    Pack4<out_t> o;
    o.v[0] = static_cast<out_t>(v.x);
    o.v[1] = static_cast<out_t>(v.y);
    o.v[2] = static_cast<out_t>(v.z);
    o.v[3] = static_cast<out_t>(v.w);
    reinterpret_cast<Pack4<out_t>*>(dst)[i] = o;
  }
  for (int64_t i = n4 * 4 + start; i < n; i += step) dst[i] = static_cast<out_t>(src[i]);
}

struct GemmOperand {
  cublasOperation_t op;
  int64_t ld;
};

// The weight as cuBLAS sees W^T (column-major): a row-major W [r, c] with row stride s IS W^T
// column-major with ld s; a column-major W needs op = T.
GemmOperand weight_transposed(const RotateSliceParams& p) {
  if (p.stride_w_col == 1) return {CUBLAS_OP_N, p.stride_w_row};
  return {CUBLAS_OP_T, p.stride_w_col};
}

// acc (fp32, row-major output shape) = alpha * product(W, qbuf) + beta * acc, where qbuf is a
// contiguous row-major [d, k] copy of Q[:, :k] in `q_type`.
void gemm_weight_q(cublasHandle_t handle, const RotateSliceParams& p, cudaDataType_t w_type, const void* qbuf,
                   cudaDataType_t q_type, float alpha, float beta, float* acc) {
  const GemmOperand wt = weight_transposed(p);
  const int d = static_cast<int>(p.d);
  const int k = static_cast<int>(p.k);
  if (p.dim == 1) {
    // out [m, k] row-major = out^T [k, m] column-major = Q^T (k x d) * W^T (d x m).
    const int m = static_cast<int>(p.w_rows);
    SLICEKIT_CUBLAS_CHECK(cublasGemmEx(handle, CUBLAS_OP_N, wt.op, k, m, d, &alpha, qbuf, q_type, k, p.w_ptr, w_type,
                                      static_cast<int>(wt.ld), &beta, acc, CUDA_R_32F, k, CUBLAS_COMPUTE_32F,
                                      CUBLAS_GEMM_DEFAULT));
  } else {
    // out [k, n] row-major = out^T [n, k] column-major = W^T (n x d) * Q (d x k).
    const int n = static_cast<int>(p.w_cols);
    SLICEKIT_CUBLAS_CHECK(cublasGemmEx(handle, wt.op, CUBLAS_OP_T, n, k, d, &alpha, p.w_ptr, w_type,
                                      static_cast<int>(wt.ld), qbuf, q_type, k, &beta, acc, CUDA_R_32F, n,
                                      CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  }
}

int64_t output_numel(const RotateSliceParams& p) { return (p.dim == 1 ? p.w_rows : p.w_cols) * p.k; }

void round_to_output(const float* acc, const RotateSliceParams& p, cudaStream_t stream) {
  const int64_t n = output_numel(p);
  const unsigned grid = static_cast<unsigned>(grid_for(ceil_div(n, 4)));
  if (p.out_dtype == c10::ScalarType::Half) {
    round_out_kernel<c10::Half><<<grid, kThreads, 0, stream>>>(acc, n, static_cast<c10::Half*>(p.out_ptr));
  } else {
    SLICEKIT_CHECK(p.out_dtype == c10::ScalarType::BFloat16,
                "slicekit::rotate_slice: internal error: fp32 accumulator path with output dtype ", p.out_dtype);
    round_out_kernel<c10::BFloat16><<<grid, kThreads, 0, stream>>>(acc, n, static_cast<c10::BFloat16*>(p.out_ptr));
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::TensorOptions device_options() {
  return at::TensorOptions().device(c10::Device(c10::kCUDA, c10::cuda::current_device()));
}

}  // namespace

template <typename weight_t>
void rotate_slice_split_cuda(const RotateSliceParams& p) {
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  cublasHandle_t handle = at::cuda::getCurrentCUDABlasHandle();
  CublasMathModeGuard math_guard(handle, CUBLAS_DEFAULT_MATH);
  const auto options = device_options();

  // 2^s with s = (significand bits of the 16-bit dtype): Q_lo then sits near |Q| in magnitude.
  const double lo_scale = std::is_same_v<weight_t, c10::Half> ? 2048.0 : 256.0;
  at::Tensor qsplit = at::empty({2, p.d, p.k}, options.dtype(c10::CppTypeToScalarType<weight_t>::value));
  weight_t* q_hi = qsplit.data_ptr<weight_t>();
  weight_t* q_lo = q_hi + p.d * p.k;
  const unsigned grid = static_cast<unsigned>(grid_for(p.d * p.k));
  if (p.q_is_double) {
    split_q_kernel<double, weight_t><<<grid, kThreads, 0, stream>>>(static_cast<const double*>(p.q_ptr),
                                                                     p.stride_q_row, p.stride_q_col, p.d, p.k,
                                                                     lo_scale, q_hi, q_lo);
  } else {
    split_q_kernel<float, weight_t><<<grid, kThreads, 0, stream>>>(static_cast<const float*>(p.q_ptr),
                                                                    p.stride_q_row, p.stride_q_col, p.d, p.k,
                                                                    lo_scale, q_hi, q_lo);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  at::Tensor acc = at::empty({output_numel(p)}, options.dtype(at::kFloat));
  const cudaDataType_t w_type = CublasType<weight_t>::value;
  gemm_weight_q(handle, p, w_type, q_hi, w_type, 1.0f, 0.0f, acc.data_ptr<float>());
  gemm_weight_q(handle, p, w_type, q_lo, w_type, static_cast<float>(1.0 / lo_scale), 1.0f, acc.data_ptr<float>());
  round_to_output(acc.data_ptr<float>(), p, stream);
}

void rotate_slice_fp32_cuda(const RotateSliceParams& p) {
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  cublasHandle_t handle = at::cuda::getCurrentCUDABlasHandle();
  // Default math with CUBLAS_COMPUTE_32F is full fp32 FMA: TF32 would round W and Q to 11 bits.
  CublasMathModeGuard math_guard(handle, CUBLAS_DEFAULT_MATH);
  const auto options = device_options();

  at::Tensor q32 = at::empty({p.d, p.k}, options.dtype(at::kFloat));
  const unsigned grid = static_cast<unsigned>(grid_for(p.d * p.k));
  if (p.q_is_double) {
    gather_q_kernel<double><<<grid, kThreads, 0, stream>>>(static_cast<const double*>(p.q_ptr), p.stride_q_row,
                                                           p.stride_q_col, p.d, p.k, q32.data_ptr<float>());
  } else {
    gather_q_kernel<float><<<grid, kThreads, 0, stream>>>(static_cast<const float*>(p.q_ptr), p.stride_q_row,
                                                          p.stride_q_col, p.d, p.k, q32.data_ptr<float>());
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  at::Tensor acc = at::empty({output_numel(p)}, options.dtype(at::kFloat));
  gemm_weight_q(handle, p, CUDA_R_32F, q32.data_ptr<float>(), CUDA_R_32F, 1.0f, 0.0f, acc.data_ptr<float>());
  round_to_output(acc.data_ptr<float>(), p, stream);
}

void rotate_slice_fp64_cuda(const at::Tensor& weight, const at::Tensor& q, int64_t k, int64_t dim,
                            const at::Tensor& out) {
  // A float32 output rounded once from an fp32 GEMM would carry the GEMM's own error (~sqrt(d) ulp),
  // several times the rounding; the float64 product (ATen's DGEMM) keeps one rounding only.
  const at::Tensor w64 = weight.to(at::kDouble);
  const at::Tensor q64 = q.narrow(1, 0, k).to(at::kDouble);
  const at::Tensor prod = dim == 1 ? at::mm(w64, q64) : at::mm(q64.t(), w64);
  out.copy_(prod);
}

template void rotate_slice_split_cuda<c10::Half>(const RotateSliceParams&);
template void rotate_slice_split_cuda<c10::BFloat16>(const RotateSliceParams&);

}  // namespace slicekit
