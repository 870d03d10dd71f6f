// Hopper (sm_90a) kernel for out[d, d] (float64) += X^T X, X [rows, d] in fp16 or bf16: only the
// output tiles that reach the upper triangle, tensor cores (wgmma) fed by TMA, the accumulator
// promoted out of the tensor cores every `chunk` rows.
//
// Why a hand-written kernel next to the cuBLAS path of covariance.cu: the tensor cores' fp32
// accumulator truncates, so a long sum drifts (a bias linear in its length); cuBLAS can only be
// stopped every chunk by ending the GEMM, which re-reads and re-writes the fp32 triangle in memory
// each time (0.5x torch's full GEMM at d = 4096). Here the promotion happens in registers: each
// consumer thread sums the MMA accumulator into a second fp32 tile `mid` (round-to-nearest CUDA-core
// adds) every `chunk` rows and restarts the MMA from zero -- the same scheme as the Triton kernel
// (kernels/covariance.py, whose docstring has the error analysis), but with warp specialisation,
// which Triton 3.6 does not give us on Hopper:
//   * one producer warpgroup (one thread) streams [64 rows x 64 columns] boxes of X through TMA
//     into a ring of shared-memory stages (128-byte swizzle, rows past N / columns past d arrive as
//     zeros), signalling `full` mbarriers;
//   * two consumer warpgroups each own 64 rows of a 128 x kN output tile and issue
//     wgmma.m64nNk16 with both operands read straight from shared memory, M/N-major (X's rows are
//     the K dimension, so neither operand needs a transpose in memory);
//   * a consumer keeps one group of MMAs in flight and hands each stage back through an `empty`
//     mbarrier as soon as the MMAs reading it are done; it waits for all of them only at the end of
//     a chunk, to promote. The second consumer's chunks end one stage after the first's (the
//     "stagger"), so the two do not drain the tensor pipe at the same moment;
//   * persistent CTAs (one per SM) walk the tiles in bands of 8 row blocks, so CTAs that run together
//     share panels of X in L2.
// Tile width kN: 128 (square tiles; a diagonal tile multiplies its panel by itself) or 192, the
// default from d = 2048 on. Timing probes (covariance_sm90_exploration.json) showed where the time
// goes at d = 4096, N = 16384 with square tiles: the TMA feed alone takes 0.41 ms, the MMAs alone
// (no copies) 0.57-0.61 ms, both 0.66 ms -- the tensor-core side bounds the kernel, not bandwidth
// (as Nsight Compute had said: tensor pipe ~49%, L2 47%; 2-CTA clusters that multicast the shared
// row panel saved bandwidth and no time, and were dropped). Tried again with 192-wide tiles, against
// the power analysis below (b5cc44c): clusters of two CTAs on tiles (I, J) and (I + 1, J), each
// multicasting half of every box of panel J into both (30% fewer bytes from L2 per tile pair; sums
// bit for bit those of whole tiles). The clock rose (1.52 vs 1.48 GHz at d = 4096, 1.51 vs 1.41 at
// 8192: less power per cycle), but the cycles rose more (+10%, +16%: a pair advances in lockstep),
// so it took 6% and 8% more time (0.572 vs 0.541 ms, 2.18 vs 2.02; covariance_energy_multicast_b5cc44c.json)
// and was dropped again. 192-wide tiles issue 1.5x the MMA work
// per instruction and per byte copied; with `acc` and `mid` they take 192 of a consumer's 232
// registers, the most that promotion in registers allows. Together with the epilogue below, the
// stagger, 192-row chunks and 3 stages: 0.49-0.52 ms at d = 4096 and 1.89-2.00 ms at d = 8192,
// N = 16384 (1.50-1.70x torch's full fp16 GEMM, 17.9-19.2x float64; README, full sweeps at 28a61e3
// and 074c3c4), 7-18% less time than the Triton kernel there.
// Whole tiles, or tiles cut into row ranges shared among CTAs: choose_split() (see Mode).
// Epilogue: each consumer adds its 64 x kN block of `mid`, widened to float64, into `out` (the
// upper triangle; with `mirror` the same value into the lower one too, so a symmetric `out` stays
// exactly symmetric). Streaming form, 192-wide tiles: a warp whose 16 rows lie wholly inside `out` and
// above the diagonal stages its sums in shared memory and hands each row to the bulk copy engine's
// float64 reduction (cp.reduce.async.bulk .add.f64, performed in L2: add_tile_bulk()); other warps, and
// 128-wide tiles, use batched loads then stores (16-byte accesses where a thread's part lies wholly
// above the diagonal). Mirrored form: L2 reductions per element (see consume()).
// What the epilogue costs (N = 16384, steady-state windows, benchmarks/covariance_energy.py):
//   * with the batched loads and stores, probe 3 (no epilogue) took 7% less time at d = 4096 and 8192;
//   * not because all CTAs reach `out` at once: letting each CTA skip (CTA % 33) k-blocks of its first
//     tile, so that their epilogues fall apart, was no faster than skipping 16 in lockstep (as much
//     work; 0.541 vs 0.531 ms at d = 4096, 2.06 vs 2.05 at 8192; covariance_energy_skew_7fae86d.json);
//     each thread waits out 2-3 DRAM round trips per tile instead;
//   * the bulk reduction takes 1-2% less time than those loads and stores (d = 4096: 0.539 vs 0.544 ms;
//     5120: 0.822 vs 0.842; 8192: 2.00 vs 2.04; SLICEKIT_COV_SM90_EPI=rmw for the latter,
//     covariance_energy_bulk_c50db7f.json) and adds bit for bit the same (one IEEE addition of the same
//     two values; test_cuda_ext.py). Probe 3 is still 5.5% faster (0.499 vs 0.529 ms at d = 4096,
//     1.87 vs 1.98 at 8192), and leaving out the second half -- its wait for the first half to leave
//     shared memory -- saved only 1.5-2% (covariance_energy_bulkprobe_58a9aa6.json; probes since
//     removed), so deferring that half into the next tile (which spilled 450-720 bytes in the MMA
//     loop) was not pursued.
// Prefetching each tile's part of `out` into L2 from the producer (cp.async.bulk.prefetch, 8-64
// k-blocks before the tile's end) was slower at every lead (0.59-0.61 and 2.40-2.49 ms; the mirrored
// form 11-23% slower), and was dropped (05afb3b). Tiles that cross the diagonal write only their part
// of the upper triangle.
//
// Chunks of kChunkRows = 192 rows: the tensor cores' fp32 sums truncate toward zero (|C[u, -u]| ==
// C[u, u] to the last bit, benchmarks/tensor_core_rounding.py), a bias that grows with the chunk. Each
// of a chunk's K = rows / 16 truncating adds loses at most one ulp of the running sum, so a chunk's
// relative error is at most 2^-23 (K + 1) / 2: 5.4e-7 at 128 rows, 7.7e-7 at 192, 1.0e-6 at 256 (the
// Triton kernel met that 1.015e-6 at d = 1 with 256-row chunks, kernels/covariance.py). Measured on
// calibration-like fp16 X at d = 4096: 4.1e-7 at 128 rows, 4.8e-7 at 192, 7.0e-7 at 256. 192 rows stay
// under the 1e-6 requirement with a bound, not only on the data tried, and take 3.5-6.6% less time
// than 128 (fewer drains of the MMA pipe and adds into `mid`); 256 would take 5-6%, without the bound.
// Two ways to cancel the bias were measured (b7859eb) and dropped: starting each chunk from minus half
// its expected sum halves the error at equal length but costs more per promotion (256-row chunks:
// 3.3e-7, 7% slower than plain 128-row ones; 512 rows: as fast, 7.0e-7); adding every other chunk
// negated (wgmma's scale-a = -1) changes nothing under truncation toward zero
// (covariance_sm90_ab_promo*.json).
//
// Power bounds the kernel on the H200 (benchmarks/covariance_energy.py: steady-state windows with the
// board's clock, power and energy counter). This kernel, torch's GEMM and the float64 path all run at
// the ~690 W limit, so a call's time is its energy divided by ~690 W. At d = 4096, N = 16384 a call
// spends ~390 mJ (torch's GEMM ~590); without the TMA copies (probe 1) 21% less, and the SM clock rises
// from ~1500 to ~1800 MHz at the same cycle count -- the copies cost power, not cycles; without the
// float64 epilogue (probe 3) 13% less; with one promotion per launch 9% less
// (covariance_energy_probes_36ec8bd.json). With this kernel, in one run (covariance_energy_overheads_89be642.json,
// fp16, N = 16384): 0.536 / 2.01 ms at d = 4096 / 8192 (17.6x / 18.6x the float64 path), 5% less with one
// promotion per launch, 6% less without the epilogue, 11-12% less without both (0.473 / 1.79 ms: 19.97x / 20.9x)
// -- so the issue's 20x lies beyond what the 1e-6 promotions and the float64 accumulator leave on this board.
// Three changes were measured and dropped (c04ea19,
// bc6921e; covariance_energy_async_*.json): a drained epilogue (consumers stage each tile's
// sums in shared memory and go on, warps of the producer warpgroup add them by L2 reductions) was
// 1-3% faster at d = 4096 and 8192 and 2% slower at 5120 -- no more than the 3 pipeline stages its
// staging left room for; MMAs that also left out each tile's 64-column boxes below the diagonal (and
// their copies) made it 6-8% slower; L2 eviction hints did nothing or harm. Leaving out those MMAs
// alone in this kernel (2436cee: m64n128/m64n64 into the first accumulator registers, shifted back at
// the promotion, 4.5% of the MMA work at d = 4096) was level (0.537 vs 0.534 ms fp16, 0.520 vs 0.518
// bf16, same cycles; covariance_energy_skip_2436cee.json) and hung once (n = 700, whole tiles,
// EPI=rmw; cause not found): reverted.
//
// The caller (covariance.cu) bounds each launch to kLaunchRows rows, so `mid` sums at most
// kLaunchRows / chunk fp32 values before float64 takes over, and copies X when it has a mask or
// rows that TMA cannot address (16-byte alignment).

#include <cuda.h>
#include <cudaTypedefs.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <unordered_map>

#include <c10/cuda/CUDACachingAllocator.h>

#include "cuda_utils.cuh"

namespace slicekit {
namespace sm90 {
namespace {

constexpr int kTile = 128;                       // output rows per tile (two consumers x 64)
constexpr int kBox = 64;                         // TMA box width: 64 16-bit values = one 128-byte swizzle row
constexpr int kBlockK = 64;                      // rows of X per pipeline stage
constexpr int kConsumers = 2;                    // warpgroups issuing MMAs, 64 output rows each
constexpr int kThreads = 128 * (1 + kConsumers);
constexpr int kBoxBytes = kBlockK * kBox * 2;    // 8 KB
constexpr int kPanelBytes = 2 * kBoxBytes;       // the row panel I: 128 columns of X, kBlockK rows

// A tile is kTile output rows by kN columns. kN = 128: square tiles on the diagonal (a diagonal tile
// multiplies panel I by itself); kN = 192: 1.5x the MMA work per instruction and per byte of X
// copied into shared memory, at 192 fp32 registers per consumer thread for `acc` and `mid` -- the
// most the register file allows with promotion in registers.
template <int kN>
struct Shape {
  static constexpr int kBoxesJ = kN / kBox;
  static constexpr int kStageBytes = kPanelBytes + kBoxesJ * kBoxBytes;  // panels I and J
  static constexpr int kStages = kN == 128 ? 6 : 5;  // the most that fit (SLICEKIT_COV_SM90_TUNE)
  // 192-wide tiles run 3 stages by default: 0.5-2.3% faster than 5 in all 9 paired windows at
  // d = 4096, 5120 and 8192 in one run (covariance_energy_async_bc6921e.json, sync_s3), level with 4
  // and 5 in the next (covariance_energy_defaults.json); 2 stages are 42-45% slower.
  static constexpr int kDefaultStages = kN == 128 ? 6 : 3;
  // The bulk epilogue (192-wide tiles, at most kDefaultStages stages) stages half a tile's float64 sums
  // per warp after the default stages: 16 rows of kN / 2 values, rows padded by 64 bytes so that a
  // quarter-warp's 16-byte stores (two rows, 64 bytes each) fall in distinct banks.
  static constexpr bool kBulk = kN == 192;
  static constexpr int kStagedRowBytes = kN / 2 * 8 + 64;
  static constexpr int kStagingOffset = kDefaultStages * kStageBytes;
  static constexpr int kStagingBytes = kBulk ? 4 * kConsumers * 16 * kStagedRowBytes : 0;
  static constexpr int kBarrierOffset = kStages * kStageBytes > kStagingOffset + kStagingBytes
                                            ? kStages * kStageBytes
                                            : kStagingOffset + kStagingBytes;
  static constexpr int kSmemBytes = kBarrierOffset + 2 * kStages * 8 + 1024;  // + barriers + alignment slack
  static_assert(kSmemBytes <= 227 * 1024, "shared memory per block on sm_90");
  static constexpr int kAcc = kN / 2;  // fp32 accumulator registers per thread of m64nNk16
};

// Which output tiles a launch computes: R row blocks of kTile, C column blocks of kN. Column block J
// starts at kN * J - off: when d is not a multiple of kN, the leftmost block is the partial one, where
// the upper triangle has the fewest rows (off = 0 for kN = kTile; a multiple of the TMA box otherwise).
struct Tiling {
  int R, C, off, group, n_tiles;
  int splits;  // row ranges per split tile (kSplitAtomic: every tile; kTail: the tiles from `full` on)
  int full;    // kTail: tiles [0, full) go whole
};

// How a launch shares its tiles among the persistent CTAs (make_plan()):
//   kWhole        every work item is a whole tile;
//   kSplitAtomic  every tile is cut into `splits` row ranges whose sums go out as atomic float64 adds
//                 (launches with fewer tiles than CTAs, streaming form only);
//   kTail         the tiles that fill whole waves go whole; the last, partly filled wave's tiles are
//                 cut into row ranges: all but the last range leave their fp32 sums in a workspace,
//                 and the CTA of the last range adds them to its own before its ordinary epilogue.
//                 One CTA writes each element, so the mirrored form may split too. (Cutting the
//                 last wave with atomic adds instead gained nothing at d = 4096, d08562b.)
// choose_split() picks one by a cost model fitted on the H200.
enum Mode : int { kWhole = 0, kSplitAtomic = 1, kTail = 2 };

// Work items of a launch. Split items are range-major, so that the CTAs running together stream the
// same rows of X (shared in L2), as with whole tiles. Each mode is a kernel of its own: run in one
// process on the H200, a kernel that read `splits` at run time was 3-9% slower at d = 4096-8192 than
// the one before it, with the same SASS in its loops (d32e077 vs 8cccd9f, covariance_sm90_splits_ab.json).
template <int kMode>
__host__ __device__ __forceinline__ int n_items(const Tiling& g) {
  if constexpr (kMode == kWhole) return g.n_tiles;
  if constexpr (kMode == kSplitAtomic) return g.n_tiles * g.splits;
  return g.full + (g.n_tiles - g.full) * g.splits;
}

// Work item `it`: tile t, k-blocks [kb0, kb1), row range r of the tile (-1: a whole tile).
template <int kMode>
__host__ __device__ __forceinline__ void work_item(int it, const Tiling& g, int num_kb, int& t, int& kb0, int& kb1,
                                                   int& r) {
  if (kMode == kWhole || (kMode == kTail && it < g.full)) {
    t = it;
    kb0 = 0;
    kb1 = num_kb;
    r = -1;
    return;
  }
  const int first = kMode == kTail ? g.full : 0;  // the first split tile
  const int n = g.n_tiles - first;                // split tiles
  const int j = it - first;
  r = j / n;
  t = first + j - r * n;
  kb0 = static_cast<int>(static_cast<int64_t>(num_kb) * r / g.splits);
  kb1 = static_cast<int>(static_cast<int64_t>(num_kb) * (r + 1) / g.splits);
}

// Where and how the tiles' sums go: the float64 matrix `out` (strides in elements) and the epilogue's
// options (set in launch_tiles()).
struct Out {
  double* ptr;
  int64_t so_row, so_col;
  int mirror;    // also add each value at its mirror position (symmetric=True)
  int vec;       // unit column stride and 16-byte aligned rows: add_tile_inner() may run
  int narrow;    // SLICEKIT_COV_SM90_EPI=narrow: add_tile_edge() for every tile, for A/B timing
  int bulk;      // add_tile_bulk() for warps whose rows lie wholly inside and above the diagonal
  float* part;   // kTail: the fp32 sums of the split tiles' ranges but the last (tail_part())
  int* flags;    // kTail: per split tile and consumer, how many of those ranges are in `part` (zeroed)
};

// First column block that row block I needs (its last column reaches the diagonal).
template <int kN>
__host__ __device__ __forceinline__ int first_block(int I, int off) {
  const int num = kTile * I - (kN - 1) + off;
  return num <= 0 ? 0 : (num + kN - 1) / kN;
}

template <int kN>
__host__ __device__ inline int count_tiles(int R, int C, int off) {
  int n = 0;
  for (int I = 0; I < R; ++I) n += C - first_block<kN>(I, off);
  return n;
}

#if defined(__CUDA_ARCH__) && (__CUDA_ARCH__ >= 900) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define SLICEKIT_SM90_DEVICE 1
#endif

#ifdef SLICEKIT_SM90_DEVICE

// Upper-triangle tile number -> (ti, tj), ti <= tj, of a T x T tile grid: bands of `group` tile-rows;
// inside a band first its own triangle column by column, then its full columns to the right.
__device__ __forceinline__ void upper_tile(int p, int T, int group, int& ti, int& tj) {
  int i0 = 0;
  int g = T < group ? T : group;
  int band = g * (g + 1) / 2 + g * (T - g);
  while (p >= band) {
    p -= band;
    i0 += group;
    g = T - i0 < group ? T - i0 : group;
    band = g * (g + 1) / 2 + g * (T - i0 - g);
  }
  const int tri = g * (g + 1) / 2;
  if (p < tri) {
    int c = 0;
    while ((c + 1) * (c + 2) / 2 <= p) ++c;
    ti = i0 + p - c * (c + 1) / 2;
    tj = i0 + c;
  } else {
    const int rect = p - tri;
    ti = i0 + rect % g;
    tj = i0 + g + rect / g;
  }
}

// The same schedule for kTile x kN tiles: bands of `group` row blocks, column by column inside a band.
template <int kN>
__device__ __forceinline__ void rect_tile(int p, const Tiling& g, int& ti, int& tj) {
  for (int i0 = 0;; i0 += g.group) {
    const int rows = g.R - i0 < g.group ? g.R - i0 : g.group;
    int band = 0;
    for (int I = i0; I < i0 + rows; ++I) band += g.C - first_block<kN>(I, g.off);
    if (p >= band) {
      p -= band;
      continue;
    }
    for (int J = first_block<kN>(i0, g.off);; ++J) {
      int last = (kN * J - g.off + kN - 1) / kTile;  // the last row block whose rows reach column block J
      if (last > i0 + rows - 1) last = i0 + rows - 1;
      const int n = last - i0 + 1;
      if (p < n) {
        ti = i0 + p;
        tj = J;
        return;
      }
      p -= n;
    }
  }
}

template <int kN>
__device__ __forceinline__ void tile_of(int p, const Tiling& g, int& ti, int& tj) {
  if constexpr (kN == kTile) {
    upper_tile(p, g.R, g.group, ti, tj);
  } else {
    rect_tile<kN>(p, g, ti, tj);
  }
}

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void mbar_init(uint64_t* bar, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_addr(bar)), "r"(count) : "memory");
}

__device__ __forceinline__ void mbar_expect_tx(uint64_t* bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(smem_addr(bar)), "r"(bytes)
               : "memory");
}

__device__ __forceinline__ void mbar_arrive(uint64_t* bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(smem_addr(bar)) : "memory");
}

__device__ __forceinline__ void mbar_wait(uint64_t* bar, uint32_t parity) {
  const uint32_t addr = smem_addr(bar);
  uint32_t done = 0;
  do {
    asm volatile(
        "{\n"
        ".reg .pred p;\n"
        "mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
        "selp.u32 %0, 1, 0, p;\n"
        "}\n"
        : "=r"(done)
        : "r"(addr), "r"(parity)
        : "memory");
  } while (!done);
}

// The next stage of the ring; the mbarrier phase to wait for flips on each wrap-around.
__device__ __forceinline__ void next_stage(int& s, uint32_t& phase, int stages) {
  if (++s == stages) {
    s = 0;
    phase ^= 1;
  }
}

// One [kBlockK rows x kBox columns] box of X at (column c0, row c1) into shared memory.
__device__ __forceinline__ void tma_load(void* dst, const CUtensorMap* map, uint64_t* bar, int c0, int c1) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%3, %4}], [%2];\n" ::"r"(
          smem_addr(dst)),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(smem_addr(bar)), "r"(c0), "r"(c1)
      : "memory");
}

// `strides`: the descriptor's constant part (desc_strides() on the host), plus the start address.
__device__ __forceinline__ uint64_t smem_desc(const void* p, uint64_t strides) {
  return strides | ((smem_addr(p) & 0x3FFFF) >> 4);
}

__device__ __forceinline__ void red_add(double* p, double v) {
  asm volatile("red.global.add.f64 [%0], %1;\n" ::"l"(p), "d"(v) : "memory");
}

// The bulk copy engine's float64 reduction: global[p, p + bytes) += shared[src, src + bytes), performed
// in L2 without a round trip for this thread; completion is tracked per issuing thread in bulk groups.
__device__ __forceinline__ void bulk_add(double* p, const void* src, uint32_t bytes) {
  asm volatile("cp.reduce.async.bulk.global.shared::cta.bulk_group.add.f64 [%0], [%1], %2;\n" ::"l"(p),
               "r"(smem_addr(src)), "r"(bytes)
               : "memory");
}
__device__ __forceinline__ void bulk_commit() { asm volatile("cp.async.bulk.commit_group;\n" ::: "memory"); }
// Until this thread's bulk groups have read their shared-memory source (it may be written again) ...
__device__ __forceinline__ void bulk_wait_read() { asm volatile("cp.async.bulk.wait_group.read 0;\n" ::: "memory"); }
// ... or have completed (before the CTA exits).
__device__ __forceinline__ void bulk_wait_all() { asm volatile("cp.async.bulk.wait_group 0;\n" ::: "memory"); }
// Orders this thread's ordinary shared-memory stores before later reads of the bulk copy engine.
__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }

// The tail's hand-over between CTAs (CUTLASS's generic barrier does the same): a consumer's 128 threads
// store their sums, meet at a named barrier (ids 1 and 2; 0 is __syncthreads), and one of them
// publishes with a release add; the waiting side reads the count with acquire loads, then meets its
// own threads at the barrier before they read the sums from L2.
__device__ __forceinline__ void consumer_sync(int c) {
  asm volatile("bar.sync %0, 128;\n" ::"r"(1 + c) : "memory");
}

__device__ __forceinline__ void red_release_add(int* p, int v) {
  asm volatile("red.release.gpu.global.add.s32 [%0], %1;\n" ::"l"(p), "r"(v) : "memory");
}

__device__ __forceinline__ int ld_acquire(const int* p) {
  int v;
  asm volatile("ld.acquire.gpu.global.b32 %0, [%1];\n" : "=r"(v) : "l"(p) : "memory");
  return v;
}

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int kPending>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(kPending) : "memory");
}

// Keeps the compiler from moving reads or writes of the accumulator across the asynchronous MMAs.
template <int kRegs>
__device__ __forceinline__ void fence_operands(float (&d)[kRegs]) {
#pragma unroll
  for (int i = 0; i < kRegs; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

#define SLICEKIT_F8(i)                                                                                  \
  "+f"(d[i]), "+f"(d[i + 1]), "+f"(d[i + 2]), "+f"(d[i + 3]), "+f"(d[i + 4]), "+f"(d[i + 5]), "+f"(d[i + 6]), \
      "+f"(d[i + 7])
#define SLICEKIT_F64(i) \
  SLICEKIT_F8(i), SLICEKIT_F8(i + 8), SLICEKIT_F8(i + 16), SLICEKIT_F8(i + 24), SLICEKIT_F8(i + 32), \
      SLICEKIT_F8(i + 40), SLICEKIT_F8(i + 48), SLICEKIT_F8(i + 56)

#define SLICEKIT_WGMMA_REGS_64                                                                        \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, " \
  "%21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, "  \
  "%40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, "  \
  "%59, %60, %61, %62, %63}"
#define SLICEKIT_WGMMA_REGS_96                                                                        \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, " \
  "%21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, "  \
  "%40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, "  \
  "%59, %60, %61, %62, %63, %64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, "  \
  "%78, %79, %80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95}"

// d[64 x N] (+)= A[64 x 16] B[16 x N], both operands M/N-major in shared memory (trans-a = trans-b = 1);
// scale_d = 0 ignores what d held (a fresh chunk). desc_a, desc_b and scale_d are operands da, db, sd.
#define SLICEKIT_WGMMA(shape, types, regs, da, db, sd)                                                        \
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %" sd ", 0;\nwgmma.mma_async.sync.aligned." shape ".f32." types \
               " " regs ", %" da ", %" db ", p, 1, 1, 1, 1;\n}\n"

template <bool kBF16, int kN>
__device__ __forceinline__ void wgmma(float (&d)[kN / 2], uint64_t desc_a, uint64_t desc_b, int scale_d) {
  if constexpr (kN == 128 && kBF16) {
    SLICEKIT_WGMMA("m64n128k16", "bf16.bf16", SLICEKIT_WGMMA_REGS_64, "64", "65", "66")
                 : SLICEKIT_F64(0) : "l"(desc_a), "l"(desc_b), "r"(scale_d));
  } else if constexpr (kN == 128) {
    SLICEKIT_WGMMA("m64n128k16", "f16.f16", SLICEKIT_WGMMA_REGS_64, "64", "65", "66")
                 : SLICEKIT_F64(0) : "l"(desc_a), "l"(desc_b), "r"(scale_d));
  } else if constexpr (kN == 192 && kBF16) {
    SLICEKIT_WGMMA("m64n192k16", "bf16.bf16", SLICEKIT_WGMMA_REGS_96, "96", "97", "98")
                 : SLICEKIT_F64(0), SLICEKIT_F8(64), SLICEKIT_F8(72), SLICEKIT_F8(80), SLICEKIT_F8(88)
                 : "l"(desc_a), "l"(desc_b), "r"(scale_d));
  } else {
    static_assert(kN == 192, "tile widths: 128, 192");
    SLICEKIT_WGMMA("m64n192k16", "f16.f16", SLICEKIT_WGMMA_REGS_96, "96", "97", "98")
                 : SLICEKIT_F64(0), SLICEKIT_F8(64), SLICEKIT_F8(72), SLICEKIT_F8(80), SLICEKIT_F8(88)
                 : "l"(desc_a), "l"(desc_b), "r"(scale_d));
  }
}

// Column where column block tj of the tiling starts (negative for a partial leftmost block: TMA
// fills the columns before 0 with zeros, and the epilogue skips them).
template <int kN>
__device__ __forceinline__ int block_col(int tj, const Tiling& g) {
  return kN * tj - g.off;
}

// Timing probes (SLICEKIT_COV_SM90_PROBE; results are garbage): 1 = no TMA copies (the MMAs run on
// whatever shared memory holds), 2 = no MMAs (the copies alone). They split the kernel's time into
// the feed and the tensor-core work.
constexpr int kProbeNoLoad = 1;
constexpr int kProbeNoMma = 2;
constexpr int kProbeNoEpilogue = 3;  // 3 = no float64 epilogue (its cost, by difference)

// The streaming form of the epilogue: out[gi, gj] += mid (widened to float64) over this thread's part
// of a 64 x kN block, upper triangle only. All loads of a batch go out before its stores: written as
// `out[k] += v` per element, the compiler must assume that each store may alias the next load and
// serialises them into 64-96 dependent round trips per thread and tile, while this SM's tensor cores
// idle (batching took d = 8192, 192-wide tiles from 2.69 to 2.46 ms).
//
// Whether element (gi, gj) of a tile is one the kernel adds: inside `out` and in its upper triangle
// (tiles that cross the diagonal also hold gi > gj; a partial leftmost column block holds gj < 0).
__device__ __forceinline__ bool in_upper(int gi, int gj, int d) { return gi < d && gj >= 0 && gj < d && gi <= gj; }

// add_tile_edge: any strides, a bounds and triangle test per element; batches of kBatch column groups
// of 8 (4 or 2: ptxas spills beyond, as the addresses and tests take registers).
template <int kN, int kBatch>
__device__ __forceinline__ void add_tile_edge(const float (&mid)[kN / 2], double* __restrict__ out, int row0, int col0,
                                              int d, int64_t so_row, int64_t so_col) {
  static_assert((kN / 8) % kBatch == 0, "batches must tile the fragment");
#pragma unroll
  for (int i0 = 0; i0 < kN / 8; i0 += kBatch) {
    double old[kBatch * 4];
#pragma unroll
    for (int k = 0; k < kBatch * 4; ++k) {
      const int gi = row0 + ((k & 3) >> 1) * 8;
      const int gj = col0 + 8 * (i0 + k / 4) + (k & 1);
      old[k] = in_upper(gi, gj, d) ? out[gi * so_row + gj * so_col] : 0.0;
    }
#pragma unroll
    for (int k = 0; k < kBatch * 4; ++k) {
      const int gi = row0 + ((k & 3) >> 1) * 8;
      const int gj = col0 + 8 * (i0 + k / 4) + (k & 1);
      if (in_upper(gi, gj, d)) out[gi * so_row + gj * so_col] = old[k] + static_cast<double>(mid[4 * i0 + k]);
    }
  }
}

// add_tile_inner: every element of this thread's part lies inside `out` and on or above the diagonal,
// `out` has unit column stride and 16-byte aligned rows. No tests, and each thread's two adjacent
// columns go as one 16-byte access (gj is even: block_col is a multiple of 64, col0 adds 2 (lane % 4)),
// addressed from two row pointers with constant offsets. Batches of 8 column groups: 32 float64 loads
// in flight per thread, 2-3 round trips per tile instead of add_tile_edge's 4-12. `acc` keeps its
// registers here (ptxas pins the wgmma accumulator for the whole loop, seen in the SASS even when each
// tile zeroes it afresh), so for 192-wide tiles ptxas spills part of `mid` around the batches (148
// bytes of spill slots, all in the epilogue): still 5-7% faster than add_tile_edge for every tile
// (SLICEKIT_COV_SM90_EPI=narrow; 0.588 -> 0.558 ms at d = 4096, 2.38 -> 2.25 ms at d = 8192,
// fp16, N = 16384, covariance_sm90_epilogue.json).
constexpr int kInnerBatch = 8;

template <int kN>
__device__ __forceinline__ void add_tile_inner(const float (&mid)[kN / 2], double* __restrict__ p0, int64_t so_row) {
  static_assert((kN / 8) % kInnerBatch == 0, "batches must tile the fragment");
  double* __restrict__ p8 = p0 + 8 * so_row;
#pragma unroll
  for (int i0 = 0; i0 < kN / 8; i0 += kInnerBatch) {
    double2 old[kInnerBatch * 2];  // pair k: column group i0 + k / 2; row 0 (k even) or 8 (k odd)
#pragma unroll
    for (int k = 0; k < kInnerBatch * 2; ++k)
      old[k] = *reinterpret_cast<const double2*>((k & 1 ? p8 : p0) + 8 * (i0 + k / 2));
#pragma unroll
    for (int k = 0; k < kInnerBatch * 2; ++k) {
      const int m = 4 * (i0 + k / 2) + 2 * (k & 1);  // mid[4 i + {0, 1}]: row 0; {2, 3}: row 8
      *reinterpret_cast<double2*>((k & 1 ? p8 : p0) + 8 * (i0 + k / 2)) =
          make_double2(old[k].x + static_cast<double>(mid[m]), old[k].y + static_cast<double>(mid[m + 1]));
    }
  }
}

// add_tile_bulk: one warp's 16 rows x kN columns, wholly inside `out` and on or above the diagonal,
// `out` with unit column stride and 16-byte aligned rows. The warp widens its sums into its staging
// area in shared memory, half a row at a time, and 16 of its lanes hand one row each to the bulk copy
// engine, which adds it into `out` in L2: the consumer goes on to its next tile while the float64
// read-modify-writes run, instead of waiting out 2-3 DRAM round trips per tile (add_tile_inner). Only
// the second half waits, for the engine to have read the first one out of shared memory.
template <int kN>
__device__ __forceinline__ void add_tile_bulk(const float (&mid)[kN / 2], double* __restrict__ row_ptr, int64_t so_row,
                                              uint8_t* staging, int lane) {
  using S = Shape<kN>;
  constexpr int kGroups = kN / 16;  // column groups of 8 per half
  uint8_t* r0 = staging + (lane / 4) * S::kStagedRowBytes + 16 * (lane % 4);
  uint8_t* r8 = r0 + 8 * S::kStagedRowBytes;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    if (lane < 16) bulk_wait_read();
    __syncwarp();
#pragma unroll
    for (int i = 0; i < kGroups; ++i) {
      const int m = 4 * (h * kGroups + i);
      *reinterpret_cast<double2*>(r0 + 64 * i) =
          make_double2(static_cast<double>(mid[m]), static_cast<double>(mid[m + 1]));
      *reinterpret_cast<double2*>(r8 + 64 * i) =
          make_double2(static_cast<double>(mid[m + 2]), static_cast<double>(mid[m + 3]));
    }
    fence_proxy_async();
    __syncwarp();
    if (lane < 16) {
      bulk_add(row_ptr + lane * so_row + h * (kN / 2), staging + lane * S::kStagedRowBytes, kN / 2 * 8);
      bulk_commit();
    }
  }
}

// kTail: where range r (< splits - 1) of split tile t leaves consumer c's fp32 sums in the workspace:
// one block of kAcc x 128 floats per (tile, range, consumer), float4 q of thread tid at q * 128 + tid
// (each warp's 16-byte accesses cover 512 contiguous bytes).
template <int kN>
__device__ __forceinline__ float4* tail_part(const Out& o, const Tiling& g, int t, int r, int c) {
  const int64_t block = (static_cast<int64_t>(t - g.full) * (g.splits - 1) + r) * kConsumers + c;
  return reinterpret_cast<float4*>(o.part) + block * (Shape<kN>::kAcc / 4) * 128;
}

// One consumer warpgroup: output rows [64 c, 64 c + 64) of each tile.
template <bool kBF16, int kN, int kMode>
__device__ __forceinline__ void consume(uint8_t* smem, uint64_t* full, uint64_t* empty, int c, int tid, int d,
                                        const Tiling& g, int num_kb, int chunk_kb, const Out& o,
                                        uint64_t desc_strides, int stages, int probe, int phase_kb) {
  using S = Shape<kN>;
  float acc[S::kAcc];
  float mid[S::kAcc];
  int s = 0;
  uint32_t phase = 0;
  int s_free = 0;  // the oldest stage this consumer has not handed back
  auto release = [&]() {
    if (tid == 0) mbar_arrive(&empty[s_free]);
    if (++s_free == stages) s_free = 0;
  };
  if (probe == kProbeNoMma) {  // a loop of its own, so the MMA loop below has no branch around its wgmmas
    for (int it = blockIdx.x; it < n_items<kMode>(g); it += gridDim.x) {
      int t, kb0, kb1, r;
      work_item<kMode>(it, g, num_kb, t, kb0, kb1, r);
      for (int kb = kb0; kb < kb1; ++kb) {
        mbar_wait(&full[s], phase);
        if (tid == 0) mbar_arrive(&empty[s]);
        next_stage(s, phase, stages);
      }
    }
    return;
  }
  for (int it = blockIdx.x; it < n_items<kMode>(g); it += gridDim.x) {
    int t, kb0, kb1, r, ti, tj;
    work_item<kMode>(it, g, num_kb, t, kb0, kb1, r);
    tile_of<kN>(t, g, ti, tj);
    const bool shared_panel = kN == kTile && ti == tj;  // a square diagonal tile: panel I times itself
#pragma unroll
    for (int i = 0; i < S::kAcc; ++i) mid[i] = 0.0f;
    bool pending = false;  // whether the previous k-block's MMAs may still be reading their stage
    bool fresh = true;     // the next MMA starts a chunk
    int left = phase_kb > 0 && phase_kb < chunk_kb ? phase_kb : chunk_kb;  // stages left in this chunk
    for (int kb = kb0; kb < kb1; ++kb) {
      mbar_wait(&full[s], phase);
      const uint8_t* a = smem + s * S::kStageBytes + c * kBoxBytes;
      const uint8_t* b = smem + s * S::kStageBytes + (shared_panel ? 0 : kPanelBytes);
      wgmma_fence();
#pragma unroll
      for (int k = 0; k < kBlockK / 16; ++k) {
        // 16 rows of X further down = 16 swizzled 128-byte rows further on, in both operands.
        wgmma<kBF16, kN>(acc, smem_desc(a + k * 16 * 128, desc_strides), smem_desc(b + k * 16 * 128, desc_strides),
                         (fresh && k == 0) ? 0 : 1);
      }
      wgmma_commit();
      next_stage(s, phase, stages);
      // Hand each stage back as soon as its MMAs are done (the newest group may still run), so the
      // producer keeps loads in flight instead of waiting for whole chunks (0.72 -> 0.64 ms at
      // d = 4096, N = 16384 on the H200).
      if (pending) {
        wgmma_wait<1>();
        release();
      }
      pending = true;
      fresh = false;
      if (--left == 0 || kb + 1 == kb1) {
        wgmma_wait<0>();
        fence_operands(acc);
        release();
        pending = false;
        fresh = true;
        left = chunk_kb;
#pragma unroll
        for (int i = 0; i < S::kAcc; ++i) mid[i] += acc[i];
      }
    }
    // Already complete (the last k-block ends a chunk); stated so that ptxas, which cannot see
    // that, does not insert a wait of its own on this path.
    wgmma_wait<0>();
    fence_operands(acc);

    // Accumulator fragment of wgmma m64nNk16 (PTX ISA): thread (warp w, lane l) holds rows
    // 16 w + l / 4 and +8, columns 8 i + 2 (l % 4) and +1, as mid[4 i + {0, 1, 2, 3}].
    const int warp = tid / 32;
    const int lane = tid % 32;
    const int wrow = ti * kTile + c * 64 + warp * 16;  // this warp's first row and the tile's first column
    const int wcol = block_col<kN>(tj, g);
    const int row0 = wrow + lane / 4;
    const int col0 = wcol + 2 * (lane % 4);
    if (probe == kProbeNoEpilogue) continue;
    if constexpr (kMode == kTail) {
      if (r >= 0) {
        int* flag = o.flags + (t - g.full) * kConsumers + c;
        if (r < g.splits - 1) {  // not the last range: leave the sums for the last one's CTA
          float4* part = tail_part<kN>(o, g, t, r, c);
#pragma unroll
          for (int q = 0; q < S::kAcc / 4; ++q)
            __stcg(part + q * 128 + tid, make_float4(mid[4 * q], mid[4 * q + 1], mid[4 * q + 2], mid[4 * q + 3]));
          consumer_sync(c);
          if (tid == 0) red_release_add(flag, 1);
          continue;
        }
        // The last range. Its partners are items of this wave or earlier ones, and never wait
        // themselves, so with every CTA resident (grid <= SMs) the wait ends. Each range's sums
        // come through `acc`, idle until the next tile starts afresh: all its loads in flight at once.
        if (tid == 0) {
          while (ld_acquire(flag) < g.splits - 1) {
          }
        }
        consumer_sync(c);
        for (int p = 0; p < g.splits - 1; ++p) {
          const float4* part = tail_part<kN>(o, g, t, p, c);
#pragma unroll
          for (int q = 0; q < S::kAcc / 4; ++q) {
            const float4 v = __ldcg(part + q * 128 + tid);
            acc[4 * q] = v.x;
            acc[4 * q + 1] = v.y;
            acc[4 * q + 2] = v.z;
            acc[4 * q + 3] = v.w;
          }
#pragma unroll
          for (int i = 0; i < S::kAcc; ++i) mid[i] += acc[i];
        }
        fence_operands(acc);
      }
    }
    double* __restrict__ out = o.ptr;
    const int64_t so_row = o.so_row, so_col = o.so_col;
    if (o.mirror || kMode == kSplitAtomic) {
      // The mirrored form: one fire-and-forget float64 add per element and per mirror element,
      // performed in L2 (red.global.add) -- no round trip, no registers for the old values, and the
      // mirror addresses, which spill when batched as below, cost nothing. Each element gets exactly
      // one add per launch, so the sums are those of a read-modify-write and a symmetric `out` stays
      // exactly symmetric. 16-25% faster than the per-element `+=` it replaced (d = 2048-8192);
      // for the streaming form the batched loads and stores below were level or faster
      // (covariance_sm90_exploration.json, d08562b). Atomically split tiles (streaming form only)
      // take this path too: CTAs holding ranges of one tile add into the same elements, which only
      // atomic adds may do (and which is why the mirrored form never splits atomically: the order of
      // a pair of adds could differ between an element and its mirror; the tail form, with one writer
      // per element, may).
#pragma unroll
      for (int i = 0; i < kN / 8; ++i) {
#pragma unroll
        for (int h = 0; h < 4; ++h) {
          const int gi = row0 + (h >> 1) * 8;
          const int gj = col0 + 8 * i + (h & 1);
          if (in_upper(gi, gj, d)) {
            const double v = static_cast<double>(mid[4 * i + h]);
            red_add(out + gi * so_row + gj * so_col, v);
            if (o.mirror && gi < gj) red_add(out + gj * so_row + gi * so_col, v);
          }
        }
      }
    } else if (S::kBulk && o.bulk && wrow + 15 < d && wcol >= wrow + 15 && wcol + kN <= d) {
      add_tile_bulk<kN>(mid, out + wrow * so_row + wcol, so_row,
                        smem + S::kStagingOffset + (c * 4 + warp) * 16 * S::kStagedRowBytes, lane);
    } else if (o.vec && !o.narrow && row0 + 8 < d && col0 >= row0 + 8 && col0 + kN - 7 < d) {
      add_tile_inner<kN>(mid, out + row0 * so_row + col0, so_row);
    } else {
      add_tile_edge<kN, kN == 128 ? 4 : 2>(mid, out, row0, col0, d, so_row, so_col);
    }
  }
  // The bulk reductions read shared memory until they complete, and the last ones must land before
  // the kernel ends.
  if (S::kBulk && o.bulk && tid % 32 < 16) bulk_wait_all();
}
#endif  // SLICEKIT_SM90_DEVICE

template <bool kBF16, int kN, int kMode>
__global__ void __launch_bounds__(kThreads, 1)
    cov_wgmma_kernel(const __grid_constant__ CUtensorMap map, int n_rows, int d, Tiling g, int chunk_kb,
                     Out o, uint64_t desc_strides, int stages, int probe, int stagger) {
#ifdef SLICEKIT_SM90_DEVICE
  using S = Shape<kN>;
  extern __shared__ uint8_t smem_raw[];
  // 128-byte swizzled boxes must start on a 1024-byte boundary (the swizzle pattern's period).
  uint8_t* smem = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t(1023));
  uint64_t* full = reinterpret_cast<uint64_t*>(smem + S::kBarrierOffset);
  uint64_t* empty = full + S::kStages;
  const int wg = threadIdx.x / 128;
  const int tid = threadIdx.x % 128;
  const int num_kb = (n_rows + kBlockK - 1) / kBlockK;

  if (threadIdx.x == 0) {
    for (int s = 0; s < stages; ++s) {
      mbar_init(&full[s], 1);
      mbar_init(&empty[s], kConsumers);
    }
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  }
  __syncthreads();

  if (wg == 0) {
    // Producer: one thread issues every copy; the warpgroup gives its registers to the consumers.
    asm volatile("setmaxnreg.dec.sync.aligned.u32 40;\n" ::: "memory");
    if (tid == 0) {
      int s = 0;
      uint32_t phase = 0;
      for (int it = blockIdx.x; it < n_items<kMode>(g); it += gridDim.x) {
        int t, kb0, kb1, r, ti, tj;
        work_item<kMode>(it, g, num_kb, t, kb0, kb1, r);
        tile_of<kN>(t, g, ti, tj);
        const bool shared_panel = kN == kTile && ti == tj;
        const int col_j = block_col<kN>(tj, g);
        for (int kb = kb0; kb < kb1; ++kb) {
          mbar_wait(&empty[s], phase ^ 1);
          uint8_t* stage = smem + s * S::kStageBytes;
          const int row = kb * kBlockK;
          if (probe == kProbeNoLoad) {
            mbar_arrive(&full[s]);
          } else {
            mbar_expect_tx(&full[s], shared_panel ? kPanelBytes : S::kStageBytes);
            tma_load(stage, &map, &full[s], ti * kTile, row);
            tma_load(stage + kBoxBytes, &map, &full[s], ti * kTile + kBox, row);
            if (!shared_panel) {
#pragma unroll
              for (int bx = 0; bx < S::kBoxesJ; ++bx)
                tma_load(stage + kPanelBytes + bx * kBoxBytes, &map, &full[s], col_j + bx * kBox, row);
            }
          }
          next_stage(s, phase, stages);
        }
      }
    }
  } else {
    asm volatile("setmaxnreg.inc.sync.aligned.u32 232;\n" ::: "memory");
    consume<kBF16, kN, kMode>(smem, full, empty, wg - 1, tid, d, g, num_kb, chunk_kb, o, desc_strides, stages, probe,
                       (wg - 1) * stagger);
  }
#endif  // SLICEKIT_SM90_DEVICE
}

PFN_cuTensorMapEncodeTiled_v12000 encode_fn() {
  static PFN_cuTensorMapEncodeTiled_v12000 fn = [] {
    void* ptr = nullptr;
    cudaDriverEntryPointQueryResult status{};
#if CUDART_VERSION >= 12050
    const cudaError_t err = cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &ptr, 12000, cudaEnableDefault, &status);
#else
    const cudaError_t err = cudaGetDriverEntryPoint("cuTensorMapEncodeTiled", &ptr, cudaEnableDefault, &status);
#endif
    return (err == cudaSuccess && status == cudaDriverEntryPointSuccess)
               ? reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(ptr)
               : nullptr;
  }();
  return fn;
}

// The shared-memory matrix descriptor's strides for an M/N-major operand with 128-byte swizzling
// (PTX ISA, "Matrix Descriptor Format"): LBO = from one 64-wide column group to the next (consecutive
// boxes of a panel, 8 KB apart), SBO = from one group of 8 rows (K) to the next (8 x 128 bytes).
// SLICEKIT_COV_SM90_DESC="lbo,sbo" (bytes) overrides them, for bring-up on a new toolchain.
uint64_t desc_strides() {
  uint64_t lbo = kBoxBytes, sbo = 8 * 128;
  if (const char* env = std::getenv("SLICEKIT_COV_SM90_DESC")) {
    unsigned long long a = 0, b = 0;
    if (std::sscanf(env, "%llu,%llu", &a, &b) == 2) {
      lbo = a;
      sbo = b;
    }
  }
  return (((lbo & 0x3FFFF) >> 4) << 16) | (((sbo & 0x3FFFF) >> 4) << 32) | (1ull << 62);  // 1 << 62: 128B swizzle
}

template <bool kBF16, int kN>
bool set_smem() {
  auto set = [](auto kernel) {
    return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Shape<kN>::kSmemBytes) ==
           cudaSuccess;
  };
  return set(cov_wgmma_kernel<kBF16, kN, kWhole>) && set(cov_wgmma_kernel<kBF16, kN, kSplitAtomic>) &&
         set(cov_wgmma_kernel<kBF16, kN, kTail>);
}

// The SLICEKIT_COV_SM90_* tuning variables, read once per call (0 / -1: the measured defaults).
//   TUNE="stages,group,ctas,l2"  pipeline stages (at most 6 for 128-wide tiles, 5 for 192; default
//                                Shape::kDefaultStages: 6 and 3), row
//                                blocks per schedule band, persistent CTAs (0 = one per SM), TMA L2
//                                promotion in bytes (0/64/128/256)
//   PROBE=1|2|3                  timing probes (see kProbeNoLoad)
//   STAGGER=k                    the second consumer ends its chunks k stages after the first
//   TILE=128|192                 tile width
//   SPLITS=s                     kSplitAtomic with s row ranges (streaming form only)
//   TAIL=s                       kTail with s row ranges (1: whole tiles)
//   EPI=narrow|rmw               add_tile_edge() for every tile / add_tile_inner() where allowed instead
//                                of the bulk epilogue, for A/B timing
// For tuning sweeps (benchmarks/covariance_sm90_sweep.py).
struct Knobs {
  int stages = 0, group = 8, ctas = 0, l2 = 256;  // stages 0: Shape::kDefaultStages
  int probe = 0, stagger = -1, tile = 0, splits = 0, tail = 0;
  bool narrow = false;
  bool epi_bulk = true;
};

Knobs read_knobs() {
  Knobs k;
  if (const char* env = std::getenv("SLICEKIT_COV_SM90_TUNE")) {
    int a = 0, b = 0, c = 0, e = 0;
    if (std::sscanf(env, "%d,%d,%d,%d", &a, &b, &c, &e) == 4 && a >= 2 && a <= 6 && b >= 1 && c >= 0) {
      k.stages = a;
      k.group = b;
      k.ctas = c;
      k.l2 = e;
    }
  }
  auto number = [](const char* name, int fallback) {
    const char* env = std::getenv(name);
    return env != nullptr && *env != '\0' ? std::atoi(env) : fallback;
  };
  k.probe = number("SLICEKIT_COV_SM90_PROBE", 0);
  k.stagger = number("SLICEKIT_COV_SM90_STAGGER", -1);
  k.tile = number("SLICEKIT_COV_SM90_TILE", 0);
  k.splits = number("SLICEKIT_COV_SM90_SPLITS", 0);
  k.tail = number("SLICEKIT_COV_SM90_TAIL", 0);
  const char* epi = std::getenv("SLICEKIT_COV_SM90_EPI");
  k.narrow = epi != nullptr && std::strcmp(epi, "narrow") == 0;
  k.epi_bulk = epi == nullptr || (std::strcmp(epi, "narrow") != 0 && std::strcmp(epi, "rmw") != 0);
  return k;
}

// 192-wide tiles from d = 2048 on: faster than 128-wide ones at every width measured on the H200
// (d = 2048: 0.18 vs 0.29 ms; 4096: 0.59 vs 0.66; 5120: 1.00 vs 1.12; 8192: 2.45 vs 2.90, N = 16384,
// covariance_sm90_tiles_epilogue.json / _choose.json). Below, 128-wide tiles give more tiles to
// share among the SMs.
int tile_width(int64_t d, const Knobs& k) {
  if (k.tile == 128 || k.tile == 192) return k.tile;
  return d >= 2048 ? 192 : 128;
}

// How to share a launch's tiles among the CTAs, in a cost model counted in k-block times of MMA work
// (num_kb = k-blocks of the launch's rows; w, rem = whole waves and left-over tiles of n_tiles on
// `slots` CTAs; rounds(n) = ceil(n / slots)):
//   kWhole             rounds(n_tiles) * (num_kb + kRmwKb)
//   kSplitAtomic(s)    rounds(n_tiles s) * (num_kb / s + kRedKb)           fewer tiles than CTAs only
//   kTail(s)           w * (num_kb + kRmwKb) + rounds(rem s) * (num_kb / s + kFixKb + kPartKb (s - 1))
// The constants are fitted to forced settings on the H200 at N = 16384 (interleaved A/B runs,
// covariance_sm90_splits_b772114.json and covariance_sm90_ab_*.json):
//   * atomic ranges cost ~32 k-blocks each (L2 reductions, one per element and range): best for
//     d = 576 (15 tiles; 8 ranges, 0.032 ms against 0.035 in the tail form and 0.12 whole);
//   * the tail form pays a fixed ~16 k-blocks (workspace stores, the wait) plus ~4 per range that the
//     last range reads back in turn: at d = 1024 3 ranges take 5% less time than 3 atomic ones,
//     at 1536 11% less; at d = 5120 (560 tiles, 4.24 waves) 8% less than whole tiles; level at
//     d = 4096 (363 tiles, 2.75 waves: 1-2% either way) and 2% slower at 8192 (10.7 waves), where
//     the model keeps whole tiles; at d = 3072 (208 tiles) 10% less than whole tiles.
// The cheapest mode wins, but whole tiles whenever within 5% of it (with 32768-row launches the model
// promised 2-3% at d = 4096 and 8192 from the tail form; measured: 1% faster and 2% slower,
// covariance_sm90_ab_65536.json); within a mode, the smallest s within 2% of its best. The mirrored
// form never splits atomically (see consume()); the tail form needs every CTA resident (the last
// range waits for the others), so at most one CTA per SM.
// SLICEKIT_COV_SM90_SPLITS=s / TAIL=s force a mode and s (TAIL=1: whole tiles).
constexpr int kMaxSplits = 16;
constexpr int kMaxTail = 8;
constexpr double kRmwKb = 8;
constexpr double kRedKb = 32;
constexpr double kFixKb = 16;
constexpr double kPartKb = 4;

struct Choice {
  Mode mode = kWhole;
  int s = 1;
};

// The smallest s in [2, most] whose cost is within 2% of the cheapest; its cost in `best`.
template <typename Cost>
int cheapest(int most, Cost cost, double& best) {
  best = 1e300;
  for (int s = 2; s <= most; ++s) best = std::min(best, cost(s));
  for (int s = 2; s <= most; ++s)
    if (cost(s) <= 1.02 * best) return s;
  return 1;
}

Choice choose_split(int n_tiles, int slots, int sms, int num_kb, bool mirror, const Knobs& k) {
  const int max_s = std::max(1, num_kb);
  const bool resident = slots <= sms;
  if (k.splits >= 1 && !mirror) return {k.splits > 1 ? kSplitAtomic : kWhole, std::min(k.splits, max_s)};
  if (k.tail >= 1) {
    const bool split = k.tail > 1 && resident;
    return split ? Choice{kTail, std::min(k.tail, max_s)} : Choice{};
  }
  auto rounds = [&](int items) { return static_cast<double>((items + slots - 1) / slots); };
  const double kb = num_kb;
  const double whole = rounds(n_tiles) * (kb + kRmwKb);
  Choice best;
  double best_cost = whole;
  if (!mirror && n_tiles < slots) {
    double cost = 0;
    const int s = cheapest(std::min(kMaxSplits, max_s), [&](int s) { return rounds(n_tiles * s) * (kb / s + kRedKb); },
                           cost);
    if (s > 1 && cost < best_cost) best = {kSplitAtomic, s}, best_cost = cost;
  }
  const int waves = n_tiles / slots, rem = n_tiles % slots;
  if (resident && rem > 0) {
    double cost = 0;
    const int s = cheapest(std::min(kMaxTail, max_s), [&](int s) {
      return waves * (kb + kRmwKb) + rounds(rem * s) * (kb / s + kFixKb + kPartKb * (s - 1));
    }, cost);
    if (s > 1 && cost < best_cost) best = {kTail, s}, best_cost = cost;
  }
  return whole <= 1.05 * best_cost ? Choice{} : best;
}

// What one launch runs: tile width, mode, tiling, grid, and the workspace kTail needs (flags, then
// the ranges' fp32 sums, each part 256-byte aligned).
struct Plan {
  int width = 128;
  Mode mode = kWhole;
  Tiling g{};
  int grid = 1;
  int64_t flag_bytes = 0, part_bytes = 0;
};

template <int kN>
Plan plan_tiles(int rows, int d, bool mirror, const Knobs& k, int sms) {
  Plan p;
  p.width = kN;
  Tiling& g = p.g;
  g.R = (d + kTile - 1) / kTile;
  g.C = (d + kN - 1) / kN;
  // Shift the column blocks left by whole TMA boxes only: copies that start at a column which is not a
  // multiple of 8 (16 bytes) faulted on the H200 (illegal instruction at d = 1 with a 191-column
  // shift), and the square tiling must not shift at all (its diagonal tiles are ti == tj).
  g.off = kN == kTile ? 0 : (g.C * kN - d) / kBox * kBox;
  g.group = k.group;
  g.n_tiles = count_tiles<kN>(g.R, g.C, g.off);  // R (R + 1) / 2 for square tiles
  g.splits = 1;
  g.full = g.n_tiles;
  const int slots = k.ctas > 0 ? k.ctas : sms;
  const int num_kb = (rows + kBlockK - 1) / kBlockK;
  const Choice c = choose_split(g.n_tiles, slots, sms, num_kb, mirror, k);
  p.mode = c.mode;
  if (c.mode == kSplitAtomic) {
    g.splits = c.s;
  } else if (c.mode == kTail) {
    g.splits = c.s;
    g.full = g.n_tiles / slots * slots;
    const int64_t rem = g.n_tiles - g.full;
    p.flag_bytes = (rem * kConsumers * static_cast<int64_t>(sizeof(int)) + 255) / 256 * 256;
    p.part_bytes = rem * (c.s - 1) * kConsumers * Shape<kN>::kAcc * 128 * static_cast<int64_t>(sizeof(float));
  }
  p.grid = std::max(1, std::min(p.mode == kWhole         ? n_items<kWhole>(g)
                                : p.mode == kSplitAtomic ? n_items<kSplitAtomic>(g)
                                                         : n_items<kTail>(g),
                                slots));
  return p;
}

Plan make_plan(int64_t rows, int64_t d, bool mirror, const Knobs& k, int device) {
  int sms = 0;
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  const int r = static_cast<int>(rows), n = static_cast<int>(d);
  return tile_width(d, k) == 192 ? plan_tiles<192>(r, n, mirror, k, sms) : plan_tiles<128>(r, n, mirror, k, sms);
}

template <int kN>
void launch_tiles(const Plan& p, const CUtensorMap& map, int rows, int d, bool bf16, int chunk_kb, double* out,
                  int64_t so_row, int64_t so_col, bool mirror, const Knobs& k, void* workspace, CUstream_st* stream) {
  // 16-byte accesses to `out` where its rows allow them (a contiguous float64 matrix with even d).
  Out o{out, so_row, so_col, mirror ? 1 : 0, 0, k.narrow ? 1 : 0, 0, nullptr, nullptr};
  o.vec = so_col == 1 && so_row % 2 == 0 && reinterpret_cast<uintptr_t>(out) % 16 == 0;
  const int stages = k.stages > 0 ? std::min(k.stages, Shape<kN>::kStages) : Shape<kN>::kDefaultStages;
  // The bulk epilogue's staging area lies past the default stages (Shape::kStagingOffset).
  o.bulk = Shape<kN>::kBulk && o.vec && !mirror && k.epi_bulk && stages <= Shape<kN>::kDefaultStages ? 1 : 0;
  if (p.mode == kTail && p.flag_bytes > 0) {
    o.flags = static_cast<int*>(workspace);
    o.part = reinterpret_cast<float*>(static_cast<char*>(workspace) + p.flag_bytes);
    C10_CUDA_CHECK(cudaMemsetAsync(workspace, 0, p.flag_bytes, stream));
  }
  auto pick = [&](auto whole, auto atomic, auto tail) {
    return p.mode == kWhole ? whole : p.mode == kSplitAtomic ? atomic : tail;
  };
  auto kernel = bf16 ? pick(cov_wgmma_kernel<true, kN, kWhole>, cov_wgmma_kernel<true, kN, kSplitAtomic>,
                            cov_wgmma_kernel<true, kN, kTail>)
                     : pick(cov_wgmma_kernel<false, kN, kWhole>, cov_wgmma_kernel<false, kN, kSplitAtomic>,
                            cov_wgmma_kernel<false, kN, kTail>);
  // The second consumer's chunks end `stagger` stages after the first's, so the two do not drain
  // their MMAs for promotion at the same time. Default: 1 for 192-wide tiles (4-5% faster at
  // d = 4096 and 8192 on the H200, covariance_sm90_stagger.json), 0 for 128-wide ones (within the
  // noise there).
  const int stagger = k.stagger >= 0 ? k.stagger : (kN == 192 ? 1 : 0);
  kernel<<<p.grid, kThreads, Shape<kN>::kSmemBytes, stream>>>(map, rows, d, p.g, chunk_kb, o, desc_strides(), stages,
                                                               k.probe, stagger);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

bool usable(int device) {
  const char* env = std::getenv("SLICEKIT_COV_SM90");
  if (env != nullptr && std::strcmp(env, "0") == 0) return false;
  static std::mutex mutex;
  static std::unordered_map<int, bool> cache;  // device -> usable
  std::lock_guard<std::mutex> lock(mutex);
  auto it = cache.find(device);
  if (it == cache.end()) {
    cudaDeviceProp prop{};
    cudaFuncAttributes attr{};
    // The build must hold sm_90a code for this kernel (a build for other archs has only an empty body).
    const bool ok = cudaGetDeviceProperties(&prop, device) == cudaSuccess && prop.major == 9 &&
                    cudaFuncGetAttributes(&attr, cov_wgmma_kernel<false, 128, kWhole>) == cudaSuccess &&
                    attr.binaryVersion >= 90 && encode_fn() != nullptr && set_smem<false, 128>() &&
                    set_smem<true, 128>() && set_smem<false, 192>() && set_smem<true, 192>();
    cudaGetLastError();  // a failed probe must not leave a sticky error for torch to find
    it = cache.emplace(device, ok).first;
  }
  return it->second;
}

void launch(const void* x, int64_t rows, int64_t d, int64_t ld, bool bf16, double* out, int64_t so_row, int64_t so_col,
            bool mirror, int64_t chunk_rows, int device, CUstream_st* stream) {
  SLICEKIT_CHECK(rows > 0 && rows <= INT32_MAX && d > 0 && d <= INT32_MAX, "slicekit: sm90 covariance: bad shape [",
                 rows, ", ", d, "]");
  SLICEKIT_CHECK(reinterpret_cast<uintptr_t>(x) % 16 == 0 && (ld * 2) % 16 == 0,
                 "slicekit: sm90 covariance: rows of X must be 16-byte aligned for TMA (ld = ", ld, ")");
  const int chunk_kb = static_cast<int>(chunk_rows / kBlockK);
  SLICEKIT_CHECK(chunk_rows % kBlockK == 0 && chunk_kb >= 1,
                 "slicekit: sm90 covariance: chunk_rows must be a positive multiple of ", kBlockK, ", got ", chunk_rows);
  const Knobs k = read_knobs();
  const Plan plan = make_plan(rows, d, mirror, k, device);
  // The tail form's workspace, from torch's caching allocator on the current stream (the one the
  // kernel runs on): freed when this function returns, its memory only goes to work ordered after
  // the kernel. Its blocks are 512-byte aligned, as the 16-byte parts after the flags need.
  c10::DataPtr workspace;
  if (plan.flag_bytes + plan.part_bytes > 0)
    workspace = c10::cuda::CUDACachingAllocator::get()->allocate(plan.flag_bytes + plan.part_bytes);
  CUtensorMap map;
  const cuuint64_t dims[2] = {static_cast<cuuint64_t>(d), static_cast<cuuint64_t>(rows)};
  const cuuint64_t strides[1] = {static_cast<cuuint64_t>(ld * 2)};
  const cuuint32_t box[2] = {kBox, kBlockK};
  const cuuint32_t elem_strides[2] = {1, 1};
  const CUtensorMapL2promotion promo = k.l2 >= 256 ? CU_TENSOR_MAP_L2_PROMOTION_L2_256B
                                       : k.l2 >= 128 ? CU_TENSOR_MAP_L2_PROMOTION_L2_128B
                                       : k.l2 >= 64  ? CU_TENSOR_MAP_L2_PROMOTION_L2_64B
                                                     : CU_TENSOR_MAP_L2_PROMOTION_NONE;
  const CUresult res = encode_fn()(&map, bf16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16, 2,
                                   const_cast<void*>(x), dims, strides, box, elem_strides,
                                   CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                                   promo, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  SLICEKIT_CHECK(res == CUDA_SUCCESS, "slicekit: sm90 covariance: cuTensorMapEncodeTiled failed with error ",
                 static_cast<int>(res), " for X [", rows, ", ", d, "] with row stride ", ld);
  const int r = static_cast<int>(rows), n = static_cast<int>(d);
  if (plan.width == 192) {
    launch_tiles<192>(plan, map, r, n, bf16, chunk_kb, out, so_row, so_col, mirror, k, workspace.get(), stream);
  } else {
    launch_tiles<128>(plan, map, r, n, bf16, chunk_kb, out, so_row, so_col, mirror, k, workspace.get(), stream);
  }
}

}  // namespace sm90
}  // namespace slicekit
