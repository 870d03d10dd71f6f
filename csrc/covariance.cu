// out[d, d] (float64) += X^T diag(m) X, computing only the upper triangle and mirroring it.
//
// Equation: C_ij += sum_n m_n x_ni x_nj for i <= j, and C_ji += the same value for i < j, so what one
// call adds is exactly symmetric whatever `out` held before.
//
// On Hopper, 16-bit X goes to the wgmma kernel of covariance_sm90.cu (covariance_sm90 below), which
// promotes its accumulator in registers; everything else (Ampere, fp32, float64, SLICEKIT_COV_SM90=0)
// takes the cuBLAS path described here.
//
// Trade-off: the products run on cuBLAS tensor-core GEMMs (fp16/bf16 in, fp32 accumulate), and only
// the long sum over rows is carried in float64. Two ways to cover the upper triangle with GEMMs
// (SLICEKIT_COV_SCHEME):
//   "blocks" (default): square B x B blocks tile the upper block triangle and run as ONE
//     pointer-array batched GEMM (plus one GEMM for the right-hand strip and one for the corner
//     when B does not divide d). Every block is in the same launch, so the GPU fills up once.
//   "recursive": the triangle of a D x D matrix (D = leaf * 2^L >= d, X zero-padded to D columns
//     when D > d) splits into 2^l off-diagonal s x s blocks per level l (s = D / 2^(l+1)) that sit
//     at a fixed stride along the diagonal, so each level is one strided-batched GEMM, and the
//     2^L diagonal leaves are one more. L + 1 launches; the deep levels have few output tiles and
//     lean on cuBLAS's split-K heuristics to fill the GPU.
// Which one is faster depends on the cuBLAS kernels chosen for pointer-array versus strided
// batches; both are here so the choice is measured, not guessed.
//
// Rows go through in chunks (SLICEKIT_COV_CHUNK): the tensor-core accumulator is fp32, so the chunk
// length bounds how many fp32 additions any partial sum sees. If the tensor cores round those
// additions to nearest, 8192-row chunks stay near 3e-7; if they truncate (as measured on V100/A100),
// the error is a bias linear in the chunk length and only ~256-row chunks stay under 1e-6. The
// extension probes this once per device and picks 8192 or 256; the short chunks cost speed (every
// chunk re-reads and re-writes the fp32 triangle in the GEMM epilogue), which no cuBLAS call can
// avoid: the fix is a GEMM that promotes its accumulator in registers, which cuBLAS does not offer
// (the Triton kernel and covariance_sm90.cu do). Chunk results are summed in fp32 by the GEMM epilogue (beta = 1,
// round-to-nearest) for up to SLICEKIT_COV_FLUSH_ROWS rows (32768, or 8192 with short chunks), then
// one flush kernel adds the fp32 triangle into the float64 `out` and writes the mirrored lower
// element. A mask is applied by a masked copy of each chunk (one memory pass), only when a mask is
// given (or X needs zero padding for the recursive scheme).

#include <algorithm>
#include <cstring>
#include <mutex>
#include <type_traits>
#include <unordered_map>
#include <vector>

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>

#include "cuda_utils.cuh"
#include "slicekit.h"

namespace slicekit {
namespace {

constexpr int kFlushTile = 32;     // flush kernel: 32 x 32 tile of the fp32 triangle per thread block
constexpr int kFlushRows = 8;      // 32 x 8 threads, four rows each
constexpr int kCopyThreads = 256;
constexpr int kPointerThreads = 128;

// Chunk defaults by how the tensor cores add in fp32 (probed once per device, see below).
constexpr int64_t kChunkRowsNearest = 8192;    // round-to-nearest sums: 8192 rows stay ~3e-7
constexpr int64_t kFlushRowsNearest = 32768;
constexpr int64_t kChunkRowsTruncating = 256;  // truncating sums: ~1.3e-9 per row, 256 rows ~3e-7
constexpr int64_t kFlushRowsTruncating = 8192; // 32 fp32 round-to-nearest additions before float64
constexpr int64_t kProbeRows = 8192;
constexpr int64_t kProbeCols = 2048;  // 256 output tiles: cuBLAS has no reason to split K (which would hide a bias)

// Upper-block-triangle blocks are numbered row by row: (0,0) (0,1) .. (0,T-1) (1,1) .. (T-1,T-1).
__host__ __device__ __forceinline__ void decode_upper(int64_t p, int64_t n_full, int64_t& bi, int64_t& bj) {
  int64_t i = 0;
  int64_t row_len = n_full;
  while (p >= row_len) {
    p -= row_len;
    ++i;
    --row_len;
  }
  bi = i;
  bj = i + p;
}

// `count` equally shaped blocks of the work buffer, each stored row-major [rows, cols], holding
// C[row0 + r][col0 + c]. Block p sits at (row0 + p*step, col0 + p*step), or, for kind 0, at the
// p-th position of the upper block triangle of side n_full. Elements at or past `limit` (= d) are
// the zero padding of the recursive scheme and are dropped.
struct CovFlushGroup {
  int kind = 1;          // 0: upper-block-triangle numbering; 1: affine along the diagonal
  int64_t count = 0;
  int64_t rows = 0;
  int64_t cols = 0;
  int64_t offset = 0;    // elements into the work buffer
  int64_t row0 = 0;
  int64_t col0 = 0;
  int64_t step = 0;
  int64_t block = 0;     // kind 0
  int64_t n_full = 0;    // kind 0
  int64_t limit = 0;
};

// One GEMM launch per chunk: C_p [rows, cols] = Xc[col0_p + (0..cols)] * Xc[row0_p + (0..rows)]^T,
// where Xc [D, N] is X read column-major (row n of X is column n of Xc).
struct CovGemm {
  bool pointer_array = false;  // true: the blocks of kind 0, via cublasGemmBatchedEx
  CovFlushGroup g;
};

struct CovPlan {
  std::vector<CovGemm> gemms;
  int64_t total = 0;     // work buffer elements
  int64_t width = 0;     // columns of X the GEMMs read (D >= d)
  int64_t n_main = 0;    // pointer-array batch size (blocks scheme)
};

void add_group(CovPlan& plan, CovGemm gemm) {
  if (gemm.g.count == 0 || gemm.g.rows == 0 || gemm.g.cols == 0) return;
  gemm.g.offset = plan.total;
  plan.total += gemm.g.count * gemm.g.rows * gemm.g.cols;
  plan.gemms.push_back(gemm);
}

// Sixteen blocks per side keeps the waste of the full diagonal blocks at 1/16 of the triangle and
// gives every d >= 2048 over 500 output tiles of 128 x 128, several waves on an H100/H200.
int64_t default_block(int64_t d) {
  if (d <= 256) return d;
  return std::max<int64_t>(128, round_up(ceil_div(d, 16), 128));
}

CovPlan plan_blocks(int64_t d, int64_t block) {
  CovPlan plan;
  plan.width = d;
  const int64_t n_full = d / block;
  const int64_t rem = d - n_full * block;
  const int64_t split = n_full * block;
  plan.n_main = n_full * (n_full + 1) / 2;
  CovGemm main;
  main.pointer_array = true;
  main.g = CovFlushGroup{0, plan.n_main, block, block, 0, 0, 0, 0, block, n_full, d};
  add_group(plan, main);
  // Rows [0, T*B) x columns [T*B, d): one GEMM; then the rem x rem corner.
  add_group(plan, CovGemm{false, CovFlushGroup{1, n_full > 0 ? 1 : 0, split, rem, 0, 0, split, 0, 0, 0, d}});
  add_group(plan, CovGemm{false, CovFlushGroup{1, 1, rem, rem, 0, split, split, 0, 0, 0, d}});
  return plan;
}

// D = leaf * 2^L with a leaf of 192..384 columns (multiple of 8) and the least padding.
CovPlan plan_recursive(int64_t d, int64_t leaf_target) {
  CovPlan plan;
  int levels = 0;
  while ((d >> (levels + 1)) >= leaf_target) ++levels;
  const int64_t leaf = round_up(ceil_div(d, int64_t(1) << levels), 8);
  plan.width = leaf << levels;
  for (int l = 0; l < levels; ++l) {
    const int64_t s = plan.width >> (l + 1);
    add_group(plan, CovGemm{false, CovFlushGroup{1, int64_t(1) << l, s, s, 0, 0, s, 2 * s, 0, 0, d}});
  }
  add_group(plan, CovGemm{false, CovFlushGroup{1, int64_t(1) << levels, leaf, leaf, 0, 0, 0, leaf, 0, 0, d}});
  return plan;
}

// Pointer arrays of the batched GEMM for every (chunk, block); see CovGemm for the operand order.
// Reading C_p column-major with ld = B gives C[row0 + r][col0 + c] row-major (C is symmetric).
__global__ void cov_pointer_kernel(const char* base, int64_t chunk_stride_bytes, int64_t n_sets, int64_t elem_bytes,
                                   char* work, int64_t work_elem_bytes, int64_t block, int64_t n_full,
                                   int64_t n_main, const void** a_ptrs, const void** b_ptrs, void** c_ptrs) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= n_sets * n_main) return;
  const int64_t set = idx / n_main;
  const int64_t p = idx - set * n_main;
  int64_t bi, bj;
  decode_upper(p, n_full, bi, bj);
  const char* chunk_base = base + set * chunk_stride_bytes;
  a_ptrs[idx] = chunk_base + bj * block * elem_bytes;
  b_ptrs[idx] = chunk_base + bi * block * elem_bytes;
  c_ptrs[idx] = work + p * block * block * work_elem_bytes;
}

// Copy a chunk of rows, zeroing masked rows (mask may be null) and the padding columns, so the
// GEMMs need neither a mask nor bounds. vec_t is a 16-byte vector where the rows allow it, the
// element's own storage otherwise.
template <typename vec_t>
__global__ void cov_copy_kernel(const vec_t* __restrict__ src, int64_t src_ld, const uint8_t* __restrict__ mask,
                                int64_t rows, int64_t row_vecs, vec_t* __restrict__ dst, int64_t dst_ld,
                                int64_t dst_vecs) {
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const bool keep = mask == nullptr || mask[r] != 0;
    const vec_t* s = src + r * src_ld;
    vec_t* t = dst + r * dst_ld;
    for (int64_t c = threadIdx.x; c < dst_vecs; c += blockDim.x) {
      t[c] = (keep && c < row_vecs) ? s[c] : vec_t{};
    }
  }
}

// out[i][j] += W (i <= j) and out[j][i] += W (i < j). Both writes are coalesced when out is
// row-major: the upper one directly, the mirrored one through a transposing shared-memory tile.
// No two threads touch the same element of out: the blocks tile the upper triangle exactly once.
template <typename acc_t>
__global__ void __launch_bounds__(kFlushTile* kFlushRows)
    cov_flush_kernel(const acc_t* __restrict__ work, CovFlushGroup g, double* __restrict__ out, int64_t so_row,
                     int64_t so_col) {
  __shared__ acc_t tile[kFlushTile][kFlushTile + 1];
  const int64_t p = blockIdx.x;
  int64_t row0 = g.row0 + p * g.step;
  int64_t col0 = g.col0 + p * g.step;
  if (g.kind == 0) {
    int64_t bi, bj;
    decode_upper(p, g.n_full, bi, bj);
    row0 = bi * g.block;
    col0 = bj * g.block;
  }
  const acc_t* wp = work + g.offset + p * g.rows * g.cols;
  const int64_t c_base = static_cast<int64_t>(blockIdx.y) * kFlushTile;
  const int64_t r_base = static_cast<int64_t>(blockIdx.z) * kFlushTile;

  for (int k = threadIdx.y; k < kFlushTile; k += kFlushRows) {
    const int64_t rr = r_base + k;
    const int64_t cc = c_base + threadIdx.x;
    acc_t v = acc_t(0);
    if (rr < g.rows && cc < g.cols) {
      v = wp[rr * g.cols + cc];
      const int64_t i = row0 + rr, j = col0 + cc;
      if (i <= j && j < g.limit) out[i * so_row + j * so_col] += static_cast<double>(v);
    }
    tile[k][threadIdx.x] = v;
  }
  __syncthreads();
  for (int k = threadIdx.y; k < kFlushTile; k += kFlushRows) {
    const int64_t cc = c_base + k;
    const int64_t rr = r_base + threadIdx.x;
    if (rr < g.rows && cc < g.cols) {
      const int64_t i = row0 + rr, j = col0 + cc;
      if (i < j && j < g.limit) out[j * so_row + i * so_col] += static_cast<double>(tile[threadIdx.x][k]);
    }
  }
}

template <typename acc_t>
void launch_flush(const acc_t* work, const CovFlushGroup& g, const CovarianceParams& p, cudaStream_t stream) {
  const dim3 threads(kFlushTile, kFlushRows);
  const dim3 grid(static_cast<unsigned>(g.count), static_cast<unsigned>(ceil_div(g.cols, kFlushTile)),
                  static_cast<unsigned>(ceil_div(g.rows, kFlushTile)));
  cov_flush_kernel<acc_t><<<grid, threads, 0, stream>>>(work, g, p.out_ptr, p.stride_out_row, p.stride_out_col);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename vec_t>
void launch_copy(const char* src, int64_t src_ld_bytes, const uint8_t* mask, int64_t rows, int64_t row_bytes,
                 char* dst, int64_t dst_ld_bytes, int64_t dst_row_bytes, cudaStream_t stream) {
  constexpr int64_t v = sizeof(vec_t);
  const int64_t grid = std::min<int64_t>(rows, 65535);
  cov_copy_kernel<vec_t><<<static_cast<unsigned>(grid), kCopyThreads, 0, stream>>>(
      reinterpret_cast<const vec_t*>(src), src_ld_bytes / v, mask, rows, row_bytes / v, reinterpret_cast<vec_t*>(dst),
      dst_ld_bytes / v, dst_row_bytes / v);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T>
struct StorageOf;
template <>
struct StorageOf<c10::Half> {
  using type = uint16_t;
};
template <>
struct StorageOf<c10::BFloat16> {
  using type = uint16_t;
};
template <>
struct StorageOf<float> {
  using type = uint32_t;
};
template <>
struct StorageOf<double> {
  using type = uint64_t;
};

// A chunk of X into a buffer whose rows are 16-byte aligned (masked rows zeroed, the buffer's
// padding columns zeroed): 16 bytes per thread where the source rows allow it, one element otherwise.
template <typename input_t>
void copy_chunk(const char* src, int64_t src_ld_bytes, const uint8_t* mask, int64_t rows, int64_t row_bytes, char* dst,
                int64_t dst_ld_bytes, cudaStream_t stream) {
  const bool vec16 = reinterpret_cast<uintptr_t>(src) % 16 == 0 && src_ld_bytes % 16 == 0 && row_bytes % 16 == 0;
  if (vec16) {
    launch_copy<uint4>(src, src_ld_bytes, mask, rows, row_bytes, dst, dst_ld_bytes, dst_ld_bytes, stream);
  } else {
    launch_copy<typename StorageOf<input_t>::type>(src, src_ld_bytes, mask, rows, row_bytes, dst, dst_ld_bytes,
                                                   dst_ld_bytes, stream);
  }
}

// Pseudo-random multiples of 1/1024 in (0, 1] from an integer hash, so the probe leaves torch's RNG alone.
__global__ void cov_probe_fill_kernel(c10::Half* __restrict__ x, int64_t n) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  uint32_t h = static_cast<uint32_t>(i) * 2654435761u;
  h ^= h >> 15;
  h *= 2246822519u;
  h ^= h >> 13;
  x[i] = c10::Half(static_cast<float>((h >> 22) + 1) * (1.0f / 1024.0f));
}

// Whether this device's tensor cores round their fp32 additions to nearest. Published studies of
// V100/A100 found truncation (Fasi et al., PeerJ CS 2021), which makes the error of a long
// fp16 x fp16 -> fp32 sum a bias growing linearly with its length (~1e-5 over 8192 rows in a CPU
// emulation) instead of ~3e-7; the chunk length must then be short. Measured once per device per
// process on X^T X of 8192 x 2048 positive values against DGEMM (an all-positive sum shows a
// truncation bias most clearly: 1.0e-5 against 3.0e-7 when rounding to nearest, in the emulation).
// It costs a few milliseconds and one stream synchronisation; SLICEKIT_COV_TC_ROUNDING=nearest or
// =truncate skips it.
bool tensor_core_sums_round_to_nearest(cublasHandle_t handle, const at::TensorOptions& options) {
  static std::mutex mutex;
  static std::unordered_map<int, bool> cache;
  const int device = c10::cuda::current_device();
  const char* forced = std::getenv("SLICEKIT_COV_TC_ROUNDING");  // "nearest" / "truncate": skip the probe
  if (forced != nullptr && std::strcmp(forced, "nearest") == 0) return true;
  if (forced != nullptr && std::strcmp(forced, "truncate") == 0) return false;
  {
    std::lock_guard<std::mutex> lock(mutex);
    const auto it = cache.find(device);
    if (it != cache.end()) return it->second;
  }
  const at::Tensor x = at::empty({kProbeRows, kProbeCols}, options.dtype(at::kHalf));
  const int64_t total = kProbeRows * kProbeCols;
  cov_probe_fill_kernel<<<static_cast<unsigned>(ceil_div(total, kCopyThreads)), kCopyThreads, 0,
                          c10::cuda::getCurrentCUDAStream().stream()>>>(static_cast<c10::Half*>(x.data_ptr()), total);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  at::Tensor c = at::empty({kProbeCols, kProbeCols}, options.dtype(at::kFloat));
  const float one = 1.0f, zero = 0.0f;
  const int n = static_cast<int>(kProbeCols);
  SLICEKIT_CUBLAS_CHECK(cublasGemmEx(handle, CUBLAS_OP_N, CUBLAS_OP_T, n, n, static_cast<int>(kProbeRows), &one,
                                     x.data_ptr(), CUDA_R_16F, n, x.data_ptr(), CUDA_R_16F, n, &zero, c.data_ptr(),
                                     CUDA_R_32F, n, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  const at::Tensor x64 = x.to(at::kDouble);
  const at::Tensor ref = at::mm(x64.t(), x64);
  const double err = c.to(at::kDouble).sub(ref).norm().item<double>() / ref.norm().item<double>();
  const bool nearest = err < 2e-6;  // round-to-nearest: ~1e-7; truncation: ~1e-5
  std::lock_guard<std::mutex> lock(mutex);
  cache[device] = nearest;
  return nearest;
}

bool env_is(const char* name, const char* value) {
  const char* s = std::getenv(name);
  return s != nullptr && std::strcmp(s, value) == 0;
}

// 16-bit X on Hopper: the wgmma kernel, launch by launch of sm90::kLaunchRows rows. X is first copied
// (masked rows zeroed, rows padded to 16 bytes) when it has a mask or rows TMA cannot address.
template <typename input_t>
void covariance_sm90(const CovarianceParams& p, cudaStream_t stream) {
  constexpr int64_t kElem = sizeof(input_t);
  constexpr bool bf16 = std::is_same_v<input_t, c10::BFloat16>;
  const int64_t d = p.dim;
  const char* x_bytes = static_cast<const char*>(p.x_ptr);
  const int64_t x_ld = p.stride_x_row;
  const bool aligned = reinterpret_cast<uintptr_t>(x_bytes) % 16 == 0 && (x_ld * kElem) % 16 == 0;
  const bool copy = p.mask_ptr != nullptr || !aligned;
  const int64_t seg = sm90::kLaunchRows;
  const int64_t chunk = env_int("SLICEKIT_COV_SM90_CHUNK", sm90::kChunkRows, 64);
  const int device = c10::cuda::current_device();
  const int64_t buf_ld = round_up(d, 8);
  at::Tensor xbuf;
  if (copy) {
    const auto options = at::TensorOptions().device(c10::Device(c10::kCUDA, device)).dtype(bf16 ? at::kBFloat16 : at::kHalf);
    xbuf = at::empty({std::min(seg, p.n_rows) * buf_ld}, options);
  }
  for (int64_t start = 0; start < p.n_rows; start += seg) {
    const int64_t rows = std::min(seg, p.n_rows - start);
    const char* src = x_bytes + start * x_ld * kElem;
    const void* base = src;
    int64_t ld = x_ld;
    if (copy) {
      char* dst = static_cast<char*>(xbuf.data_ptr());
      const uint8_t* mask = p.mask_ptr != nullptr ? p.mask_ptr + start : nullptr;
      copy_chunk<input_t>(src, x_ld * kElem, mask, rows, d * kElem, dst, buf_ld * kElem, stream);
      base = dst;
      ld = buf_ld;
    }
    sm90::launch(base, rows, d, ld, bf16, p.out_ptr, p.stride_out_row, p.stride_out_col, p.mirror, chunk, device,
                 stream);
  }
}

}  // namespace

const char* covariance_path_cuda(c10::ScalarType dtype) {
  const bool half = dtype == c10::ScalarType::Half || dtype == c10::ScalarType::BFloat16;
  return half && sm90::usable(c10::cuda::current_device()) ? "sm90_wgmma" : "cublas";
}

template <typename input_t>
void covariance_accumulate_cuda(const CovarianceParams& p) {
  // fp64 inputs keep fp64 partial sums (DGEMM); every other dtype accumulates in fp32.
  using acc_t = std::conditional_t<std::is_same_v<input_t, double>, double, float>;
  constexpr int64_t kElem = sizeof(input_t);
  const cudaDataType_t in_type = CublasType<input_t>::value;
  const cudaDataType_t acc_type = CublasType<acc_t>::value;
  // CUBLAS_COMPUTE_32F with the default math mode: tensor cores for fp16/bf16, plain fp32 FMA for
  // fp32 inputs (TF32 only comes with CUBLAS_COMPUTE_32F_FAST_TF32 or the TF32 math mode).
  const cublasComputeType_t compute = std::is_same_v<input_t, double> ? CUBLAS_COMPUTE_64F : CUBLAS_COMPUTE_32F;

  const int64_t d = p.dim;
  const int64_t n_rows = p.n_rows;
  if (n_rows == 0 || d == 0) return;

  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  if constexpr (std::is_same_v<input_t, c10::Half> || std::is_same_v<input_t, c10::BFloat16>) {
    if (sm90::usable(c10::cuda::current_device())) {
      covariance_sm90<input_t>(p, stream);
      return;
    }
  }
  cublasHandle_t handle = at::cuda::getCurrentCUDABlasHandle();  // bound to `stream`, torch's workspace
  CublasMathModeGuard math_guard(handle, CUBLAS_DEFAULT_MATH);
  const auto options = at::TensorOptions().device(c10::Device(c10::kCUDA, c10::cuda::current_device()));

  // fp32/fp64 inputs sum on CUDA cores (round-to-nearest FMA); 16-bit inputs on the tensor cores.
  const bool nearest = !std::is_same_v<acc_t, float> || std::is_same_v<input_t, float> ||
                       (p.chunk_rows > 0 && p.flush_rows > 0) || tensor_core_sums_round_to_nearest(handle, options);
  const int64_t chunk_default = nearest ? kChunkRowsNearest : kChunkRowsTruncating;
  const int64_t flush_default = nearest ? kFlushRowsNearest : kFlushRowsTruncating;
  const int64_t chunk_env = p.chunk_rows > 0 ? p.chunk_rows : env_int("SLICEKIT_COV_CHUNK", chunk_default, 256);
  const int64_t chunk = std::min<int64_t>({n_rows, chunk_env, INT32_MAX});
  const int64_t flush_rows = p.flush_rows > 0 ? p.flush_rows : env_int("SLICEKIT_COV_FLUSH_ROWS", flush_default, 256);
  const int64_t chunks_per_flush = std::max<int64_t>(1, flush_rows / chunk);
  const int64_t n_chunks = ceil_div(n_rows, chunk);
  const bool recursive = env_is("SLICEKIT_COV_SCHEME", "recursive");
  const CovPlan plan =
      recursive ? plan_recursive(d, p.block > 0 ? p.block : env_int("SLICEKIT_COV_BLOCK", 192, 128))
                : plan_blocks(d, std::min<int64_t>(d, p.block > 0 ? p.block : env_int("SLICEKIT_COV_BLOCK", default_block(d), 128)));
  at::Tensor work = at::empty({plan.total}, options.dtype(c10::CppTypeToScalarType<acc_t>::value));
  acc_t* work_ptr = work.data_ptr<acc_t>();

  // Masked rows and padding columns are zeroed in a chunk-sized copy whose leading dimension is a
  // multiple of 16 bytes, which also gives cuBLAS aligned rows when d is odd.
  const bool copy = p.mask_ptr != nullptr || plan.width > d;
  const int64_t buf_ld = round_up(plan.width, 16 / kElem);
  at::Tensor xbuf;
  if (copy) xbuf = at::empty({chunk * buf_ld}, options.dtype(c10::CppTypeToScalarType<input_t>::value));
  const char* x_bytes = static_cast<const char*>(p.x_ptr);
  const int64_t x_ld = p.stride_x_row;

  // Without a copy each chunk has its own base pointer and so its own pointer set.
  const int64_t n_sets = copy ? 1 : n_chunks;
  at::Tensor ptrs;
  const void** a_ptrs = nullptr;
  const void** b_ptrs = nullptr;
  void** c_ptrs = nullptr;
  const bool has_pointer_gemm = std::any_of(plan.gemms.begin(), plan.gemms.end(), [](const CovGemm& g) { return g.pointer_array; });
  if (has_pointer_gemm) {
    const CovFlushGroup& g = plan.gemms.front().g;
    ptrs = at::empty({3 * n_sets * plan.n_main}, options.dtype(at::kLong));
    a_ptrs = reinterpret_cast<const void**>(ptrs.data_ptr<int64_t>());
    b_ptrs = a_ptrs + n_sets * plan.n_main;
    c_ptrs = const_cast<void**>(b_ptrs + n_sets * plan.n_main);
    const char* base = copy ? static_cast<const char*>(xbuf.data_ptr()) : x_bytes;
    const int64_t chunk_stride_bytes = copy ? 0 : chunk * x_ld * kElem;
    const int64_t total = n_sets * plan.n_main;
    cov_pointer_kernel<<<static_cast<unsigned>(ceil_div(total, kPointerThreads)), kPointerThreads, 0, stream>>>(
        base, chunk_stride_bytes, n_sets, kElem, reinterpret_cast<char*>(work_ptr + g.offset), sizeof(acc_t), g.block,
        g.n_full, plan.n_main, a_ptrs, b_ptrs, c_ptrs);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }

  const acc_t one = acc_t(1);
  const acc_t zero = acc_t(0);
  for (int64_t c = 0; c < n_chunks; ++c) {
    const int64_t k0 = c * chunk;
    const int kc = static_cast<int>(std::min(chunk, n_rows - k0));
    const char* base;
    int64_t ld;
    if (copy) {
      const char* src = x_bytes + k0 * x_ld * kElem;
      char* dst = static_cast<char*>(xbuf.data_ptr());
      const uint8_t* mask = p.mask_ptr != nullptr ? p.mask_ptr + k0 : nullptr;
      copy_chunk<input_t>(src, x_ld * kElem, mask, kc, d * kElem, dst, buf_ld * kElem, stream);
      base = dst;
      ld = buf_ld;
    } else {
      base = x_bytes + k0 * x_ld * kElem;
      ld = x_ld;
    }
    const int64_t set = copy ? 0 : c;
    const void* beta = (c % chunks_per_flush == 0) ? static_cast<const void*>(&zero) : static_cast<const void*>(&one);
    const int ldi = static_cast<int>(ld);

    for (const CovGemm& gemm : plan.gemms) {
      const CovFlushGroup& g = gemm.g;
      const int m = static_cast<int>(g.cols);
      const int n = static_cast<int>(g.rows);
      if (gemm.pointer_array) {
        SLICEKIT_CUBLAS_CHECK(cublasGemmBatchedEx(handle, CUBLAS_OP_N, CUBLAS_OP_T, m, n, kc, &one,
                                                  a_ptrs + set * plan.n_main, in_type, ldi, b_ptrs + set * plan.n_main,
                                                  in_type, ldi, beta, c_ptrs + set * plan.n_main, acc_type, m,
                                                  static_cast<int>(g.count), compute, CUBLAS_GEMM_DEFAULT));
      } else {
        // Block p: A = columns [col0 + p*step, +cols) and B = columns [row0 + p*step, +rows) of X.
        SLICEKIT_CUBLAS_CHECK(cublasGemmStridedBatchedEx(
            handle, CUBLAS_OP_N, CUBLAS_OP_T, m, n, kc, &one, base + g.col0 * kElem, in_type, ldi, g.step,
            base + g.row0 * kElem, in_type, ldi, g.step, beta, work_ptr + g.offset, acc_type, m, g.rows * g.cols,
            static_cast<int>(g.count), compute, CUBLAS_GEMM_DEFAULT));
      }
    }
    if (c % chunks_per_flush == chunks_per_flush - 1 || c == n_chunks - 1) {
      for (const CovGemm& gemm : plan.gemms) launch_flush<acc_t>(work_ptr, gemm.g, p, stream);
    }
  }
}

template void covariance_accumulate_cuda<c10::Half>(const CovarianceParams&);
template void covariance_accumulate_cuda<c10::BFloat16>(const CovarianceParams&);
template void covariance_accumulate_cuda<float>(const CovarianceParams&);
template void covariance_accumulate_cuda<double>(const CovarianceParams&);

}  // namespace slicekit
