// Residual update of a sliced model: y = x S + h W^T (+ b), written into one output buffer.
//
// Equation: y[M, k_out] = x[M, k_in] S[k_in, k_out] + h[M, n] W[k_out, n]^T + b[k_out].
//
// Trade-off, stated plainly: this is two cuBLAS GEMMs sharing one output (the first writes it,
// the second adds with beta = 1), with the bias broadcast into y first; it is not a fused kernel.
// It saves the unfused path's temporary, its separate add and one pass of y through memory, and
// rounds exactly as often as the unfused PyTorch sequence (once per GEMM in the output dtype).

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include "cuda_utils.cuh"
#include "slicekit.h"

namespace slicekit {
namespace {

constexpr int kThreads = 256;

template <typename scalar_t>
__global__ void broadcast_bias_kernel(const scalar_t* __restrict__ bias, int64_t m, int64_t k_out,
                                      scalar_t* __restrict__ y) {
  const int64_t total = m * k_out;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total; idx += step) {
    y[idx] = bias[idx % k_out];
  }
}

}  // namespace

template <typename scalar_t>
void shortcut_linear_cuda(const ShortcutLinearParams& p) {
  using compute_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
  const cudaDataType_t type = CublasType<scalar_t>::value;
  const cublasComputeType_t compute = std::is_same_v<scalar_t, double> ? CUBLAS_COMPUTE_64F : CUBLAS_COMPUTE_32F;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  cublasHandle_t handle = at::cuda::getCurrentCUDABlasHandle();
  // Split-K partial sums in the 16-bit output type would add roundings the reference does not have.
  CublasMathModeGuard math_guard(
      handle, static_cast<cublasMath_t>(CUBLAS_DEFAULT_MATH | CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION));

  const compute_t one = compute_t(1);
  const compute_t zero = compute_t(0);
  bool written = false;
  if (p.bias_ptr != nullptr) {
    const int64_t total = p.m * p.k_out;
    const unsigned grid = static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>(ceil_div(total, kThreads), 65535 * 8)));
    broadcast_bias_kernel<scalar_t><<<grid, kThreads, 0, stream>>>(static_cast<const scalar_t*>(p.bias_ptr), p.m,
                                                                    p.k_out, static_cast<scalar_t*>(p.y_ptr));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    written = true;
  }
  const int m = static_cast<int>(p.m);
  const int k_out = static_cast<int>(p.k_out);
  if (p.n > 0) {
    // y^T [k_out, M] (column-major) = W (k_out x n) * h^T (n x M); row-major W is W^T column-major.
    SLICEKIT_CUBLAS_CHECK(cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, k_out, m, static_cast<int>(p.n), &one,
                                      p.w_ptr, type, static_cast<int>(p.stride_w_row), p.h_ptr, type,
                                      static_cast<int>(p.stride_h_row), written ? &one : &zero, p.y_ptr, type, k_out,
                                      compute, CUBLAS_GEMM_DEFAULT));
    written = true;
  }
  if (p.k_in > 0) {
    // y^T += S^T (k_out x k_in) * x^T (k_in x M); row-major S [k_in, k_out] is S^T column-major.
    SLICEKIT_CUBLAS_CHECK(cublasGemmEx(handle, CUBLAS_OP_N, CUBLAS_OP_N, k_out, m, static_cast<int>(p.k_in), &one,
                                      p.s_ptr, type, static_cast<int>(p.stride_s_row), p.x_ptr, type,
                                      static_cast<int>(p.stride_x_row), written ? &one : &zero, p.y_ptr, type, k_out,
                                      compute, CUBLAS_GEMM_DEFAULT));
    written = true;
  }
  if (!written) {
    C10_CUDA_CHECK(cudaMemsetAsync(p.y_ptr, 0, p.m * p.k_out * sizeof(scalar_t), stream));
  }
}

template void shortcut_linear_cuda<c10::Half>(const ShortcutLinearParams&);
template void shortcut_linear_cuda<c10::BFloat16>(const ShortcutLinearParams&);
template void shortcut_linear_cuda<float>(const ShortcutLinearParams&);
template void shortcut_linear_cuda<double>(const ShortcutLinearParams&);

}  // namespace slicekit
