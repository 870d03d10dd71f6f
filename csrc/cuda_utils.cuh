// Small helpers shared by the .cu files: cuBLAS type tags, a math-mode guard, tuning knobs.
#pragma once

#include <cstdint>
#include <cstdlib>

// Light headers only: ATen/cuda/CUDAContext.h pulls in much more of ATen, and compile time matters (CI).
#include <ATen/cuda/CUDAContextLight.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>
#include <cublas_v2.h>

#include "slicekit.h"

// Like ATen's TORCH_CUDABLAS_CHECK (whose header drags in ATen/Context.h), naming the failed call.
#define SLICEKIT_CUBLAS_CHECK(EXPR)                                                                 \
  do {                                                                                              \
    const cublasStatus_t _status = (EXPR);                                                          \
    SLICEKIT_CHECK(_status == CUBLAS_STATUS_SUCCESS, "slicekit: cuBLAS call failed with ",             \
                cublasGetStatusString(_status), " (", static_cast<int>(_status), "): ", #EXPR);     \
  } while (0)

namespace slicekit {

template <typename T>
struct CublasType;
template <>
struct CublasType<c10::Half> {
  static constexpr cudaDataType_t value = CUDA_R_16F;
};
template <>
struct CublasType<c10::BFloat16> {
  static constexpr cudaDataType_t value = CUDA_R_16BF;
};
template <>
struct CublasType<float> {
  static constexpr cudaDataType_t value = CUDA_R_32F;
};
template <>
struct CublasType<double> {
  static constexpr cudaDataType_t value = CUDA_R_64F;
};

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
inline int64_t round_up(int64_t a, int64_t b) { return ceil_div(a, b) * b; }

// A positive integer from the environment, or `fallback`. Read per call so a tuning sweep can
// change it between calls in one process (os.environ writes through to the C environment).
// A tuning override from the environment, honoured only when it is a positive multiple of
// `multiple`: on the H200 (2026-11-30) block sizes below 128 and row chunks that are not multiples
// of 256 gave wrong sums in tests/test_cuda_ext.py, so values outside the validated grid fall back.
inline int64_t env_int(const char* name, int64_t fallback, int64_t multiple = 1) {
  const char* s = std::getenv(name);
  if (s == nullptr || *s == '\0') return fallback;
  char* end = nullptr;
  long long v = std::strtoll(s, &end, 10);
  return (end != s && v > 0 && v % multiple == 0) ? static_cast<int64_t>(v) : fallback;
}

// torch sets the shared handle's math mode from torch.backends.cuda.matmul.allow_tf32 on every
// getCurrentCUDABlasHandle(); our precision contract must not depend on that global switch, so
// the mode is pinned for the duration of one op and restored afterwards.
class CublasMathModeGuard {
 public:
  CublasMathModeGuard(cublasHandle_t handle, cublasMath_t mode) : handle_(handle) {
    SLICEKIT_CUBLAS_CHECK(cublasGetMathMode(handle_, &previous_));
    SLICEKIT_CUBLAS_CHECK(cublasSetMathMode(handle_, mode));
  }
  ~CublasMathModeGuard() { cublasSetMathMode(handle_, previous_); }  // a destructor must not throw
  CublasMathModeGuard(const CublasMathModeGuard&) = delete;
  CublasMathModeGuard& operator=(const CublasMathModeGuard&) = delete;

 private:
  cublasHandle_t handle_;
  cublasMath_t previous_ = CUBLAS_DEFAULT_MATH;
};

}  // namespace slicekit
