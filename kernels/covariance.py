"""Triton kernel for the streaming second moment  C += X^T diag(m) X  (float64 C, 16-bit X).

Equation: for X [N, d] and a 0/1 row mask m [N], add  sum_r m_r x_r x_r^T  into the float64 [d, d]
accumulator C. Only the upper-triangle tile pairs (I <= J) of the d x d result are computed -- a
symmetric product needs half the FLOPs of the full GEMM. With ``symmetric=True`` each program
writes its tile AND its mirror, so C stays exactly symmetric after every call; with
``symmetric=False`` only the upper triangle is written and the caller mirrors once at the end
(``slicekit.ops.covariance.symmetrize_``): the float64 read-modify-write of the mirror costs ~8%
of a call at d = 4096 (benchmarks/results/covariance_variants.json).

Main trade-off: tensor-core speed against float64 accuracy. Products of fp16/bf16 values are exact
in fp32, so all the error is in the sums:
  * A tensor-core fp32 accumulator rounds at every k=16 MMA step, and it truncates instead of
    rounding to nearest (Fasi, Higham, Mikaitis, Pranesh, "Numerical behavior of NVIDIA tensor
    cores", PeerJ CS 2021, for V100..A100). The error is then a bias relative to the accumulator's
    own size, growing linearly with the rows summed instead of as a square root. A bit-level
    emulation (exact products aligned to the largest term with 3 extra bits, truncated: an
    assumption about Hopper) on outlier-channel data at N = 65536 gives ~2.4e-4 for one
    accumulator over all rows (cuBLAS's fp32-output GEMM has the same problem), 1.3e-6 when it
    is restarted every 512 rows, 6e-7 every 256 rows, 3e-7 every 128 rows.
  * Two fp32 tiles per program: `acc` (the MMA accumulator) sums CHUNK_ROWS = 192 rows and is
    then added into `mid` with round-to-nearest CUDA-core adds (unbiased) and cleared. At the end
    mid + acc is formed in float64 and added into C. `mid` sums at most LAUNCH_ROWS / CHUNK_ROWS
    = 171 chunk results: the wrapper cuts longer inputs into launches of LAUNCH_ROWS rows, so the
    round-to-nearest error of `mid` stays ~sqrt(171) * 2^-24. Measured on the H200 at N = 16384,
    256-row chunks: 9.10e-7 total with `mid` alone against 9.01e-7 with a third, Fast2Sum-
    compensated tile -- the truncation inside each chunk dominates, and at d = 1 (one sum, no
    averaging over elements) it reached 1.015e-6. Each of a chunk's K = rows / 16 truncating adds
    loses at most an ulp of the running sum, so a chunk errs by at most 2^-23 (K + 1) / 2: 5.4e-7 at
    128 rows, 7.7e-7 at 192, 1.0e-6 at 256 -- hence 192-row chunks, inside 1e-6 by the bound (as in
    the CUDA kernel, csrc/covariance_sm90.cu). Against 128 rows, with the autotuner's config held
    fixed: 4% less time at d = 4096, N = 16384 (fp16 0.609 -> 0.584 ms, bf16 0.596 -> 0.573), bf16
    at N = 65536 2.20 -> 2.12, fp16 at N = 65536 2.31 -> 2.36 (covariance_chunks_192_3f86839.json).
    A third tile would cost 64 more registers per thread, which the H200 pays with ~8% of the
    time (covariance_variants.json); one extra float64 read-modify-write of the upper triangle
    per 32768 rows costs ~4%.
  * Rejected: a read-modify-write of the float64 tile in global memory every chunk, or split-K
    over row chunks with float64 atomics: 16 bytes per output element per chunk, GBs per call
    at d = 4096, memory-bound unless chunks are thousands of rows long, which precision forbids.
    `benchmarks/bench_covariance.py --chunks` measures the interval on real hardware;
    SLICEKIT_COV_CHUNK_ROWS changes it without editing code.
  * fp32 inputs use input_precision="ieee" (FMA, no tensor cores): TF32 keeps 10 mantissa bits
    (~5e-4 per product) and 3xTF32 still ~5e-7 per product, both far from the float64 path. fp32
    inputs are therefore slow but accurate; fp64 inputs go to the float64 reference.
Loads: on Hopper (and in the interpreter) 16-bit inputs whose rows are 16-byte aligned are read
through a TMA tensor descriptor -- the copy engine fetches [BLOCK_K, BLOCK_M] panels into shared
memory without per-thread address arithmetic or registers, 15% faster on the H200 than pointer
loads; rows past N and columns past d arrive as zeros. TMA cannot skip rows, so with a mask the
kept rows are first gathered into a contiguous copy (one pass over X, far cheaper than the
predicated pointer loads: 0.93 vs 0.66 ms at d = 4096, N = 16384 before TMA). Elsewhere (Ampere,
odd d, fp32) pointer loads with the mask folded into the load predicates: dropped rows are never
read (padding may even hold inf/NaN) and contribute 0.
Layout: X is read as [BLOCK_K, BLOCK_M] row panels of columns I and J; the MMA takes the panel of
I transposed straight from shared memory. Tiles are enumerated in bands of GROUP_M tile-rows, column
by column inside a band, so programs that run together share panels in L2.
"""
from __future__ import annotations

import contextlib
import os

import torch
import triton
import triton.language as tl

from ._autotune import autotune_cache_kwargs

try:  # host-side TMA descriptors: triton >= 3.4
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # pragma: no cover - older triton: pointer loads only
    TensorDescriptor = None

# Rows summed in the MMA accumulator between flushes into `mid` (error grows linearly with it,
# see the module docstring). SLICEKIT_COV_CHUNK_ROWS overrides it for experiments (a multiple of 64).
CHUNK_ROWS = int(os.environ.get("SLICEKIT_COV_CHUNK_ROWS", "192"))
# Rows per launch: bounds how many chunk results `mid` sums in fp32 before C takes them in float64.
LAUNCH_ROWS = 32768

_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")

# Below N * d * d = 2**34 (d = 2048 at N = 4096) one fixed config is used instead of autotuning.
_AUTOTUNE_MIN_WORK = 1 << 34

# Split-K for streaming launches with fewer tiles than programs can run at once (d = 576: 45 64-wide
# tiles, one 16384-row loop each, 0.17 ms on the H200): each tile's rows are cut into s ranges, one
# program each, whose float64 sums go out as atomic adds. Modelled in rows per program,
#   ceil(tiles s / slots) * (rows / s + _SPLIT_COST_ROWS),   slots = SMs * _PROGRAMS_PER_SM[BLOCK_M],
# fitted to forced counts on the H200 (covariance_triton_splits_16384.json, _4096.json: a program
# costs ~4096 rows' worth beyond its rows; ~3 64-wide programs run per SM, as d = 768 went from 4 ranges,
# 312 programs, 0.062 ms, to 6 ranges, 468 programs, 0.078 ms). With this model, at N = 16384
# (covariance_triton_splits_7842328.json): d = 576 0.170 -> 0.042 ms (8 ranges), 768 0.170 -> 0.055 ms
# (5), 1024 0.077 -> 0.059 ms (2). The smallest s within 2% of the cheapest.
# SLICEKIT_COV_TRITON_SPLITS=s forces s for the streaming form (1: whole tiles), for benchmarks.
_SPLIT_COST_ROWS = 4096
_PROGRAMS_PER_SM = {64: 3, 128: 1}
_MAX_SPLITS = 16


def choose_splits(n_tiles: int, n_rows: int, slots: int) -> int:
    """Row ranges per tile for a streaming launch of ``n_tiles`` tiles over ``n_rows`` rows when
    ``slots`` programs run at once (see ``_SPLIT_COST_ROWS``)."""
    if n_tiles >= slots:
        return 1

    def cost(s: int) -> float:
        rounds = -(-n_tiles * s // slots)
        return rounds * (n_rows / s + _SPLIT_COST_ROWS)

    most = max(1, min(_MAX_SPLITS, n_rows // 64))
    best = min(cost(s) for s in range(1, most + 1))
    return next(s for s in range(1, most + 1) if cost(s) <= 1.02 * best)


def tma_block(d: int) -> list[int]:
    """The TMA box [BLOCK_K, BLOCK_M] for a d-wide input: one per launch, set before autotuning.

    The descriptor is built on the host with a fixed box, so the autotuner only times configs of
    that tile shape (no per-config pre-hook resizing it, which would keep Triton from caching the
    autotuner's choice on disk). 128-wide tiles from d = 4096 on (the autotuner's pick there on the
    H200 when it could choose, covariance.json), 64-wide below (its pick at d = 2048).
    """
    if _INTERPRET:
        return [32, 32]
    return [64, 128] if d >= 4096 else [64, 64]


def _configs():
    if _INTERPRET:
        # One small config: the interpreter runs every program in numpy, and autotuning would run
        # them all. GROUP_M = 2 exercises the band enumeration on the small d of the CPU tests.
        return [triton.Config({"BLOCK_M": 32, "BLOCK_K": 32, "GROUP_M": 2}, num_warps=4, num_stages=1)]
    configs = []
    # 128 x 128 tiles, 8 warps: two fp32 tiles (acc, mid) at 64 registers each per thread.
    # Measured on the H200 (covariance_variants.json, the autotuner's picks in covariance.json):
    # BLOCK_K = 64 with 3-5 stages; BLOCK_K = 32 never won, so it is not timed (cold-start cost).
    for block_k, stages, group in ((64, 4, 8), (64, 5, 8), (64, 3, 8), (64, 4, 16)):
        configs.append(triton.Config({"BLOCK_M": 128, "BLOCK_K": block_k, "GROUP_M": group},
                                     num_warps=8, num_stages=stages))
    # 64 x 64 tiles: 4x the tiles, for small d where 128-tiles leave SMs idle (d = 2048: 136 tiles),
    # and for Ampere, where mma.sync operands live in registers too and 128-tiles spill.
    for block_k, stages in ((64, 3), (64, 4), (32, 4), (32, 2)):
        configs.append(triton.Config({"BLOCK_M": 64, "BLOCK_K": block_k, "GROUP_M": 8},
                                     num_warps=4, num_stages=stages))
    return configs


_SMALL_CONFIG = triton.Config({"BLOCK_M": 64, "BLOCK_K": 32, "GROUP_M": 8}, num_warps=4, num_stages=3)


def _prune_configs(configs, named_args, **kwargs):
    """Configs worth timing for this call (each costs a compile and a benchmark).

    fp32 inputs take the FMA path (no tensor cores): only the small-tile, short-K configs. From
    d = 4096 on, 128-tiles already make >= 528 tiles (4 full waves on 132 SMs); 64-tiles there
    only double the L2 traffic.
    """
    x = named_args.get("X_ptr")
    if x is not None and getattr(x, "dtype", None) == torch.float32:
        small = [c for c in configs if c.kwargs["BLOCK_M"] == 64 and c.kwargs["BLOCK_K"] == 32]
        return small or configs[:1]
    kept = [c for c in configs if c.num_stages >= 3]
    if named_args.get("d", 0) >= 4096:
        kept = [c for c in kept if c.kwargs["BLOCK_M"] == 128]
    desc = named_args.get("X_desc")
    if TensorDescriptor is not None and isinstance(desc, TensorDescriptor):  # TMA: the box is fixed
        box = list(desc.block_shape)
        kept = [c for c in kept if [c.kwargs["BLOCK_K"], c.kwargs["BLOCK_M"]] == box]
        return kept or [c for c in configs if [c.kwargs["BLOCK_K"], c.kwargs["BLOCK_M"]] == box]
    return kept or configs


@triton.jit
def upper_tile(pid, d, BLOCK_M: tl.constexpr, GROUP_M: tl.constexpr):
    """Program id -> upper-triangle tile (I, J), I <= J, of a d x d result in BLOCK_M tiles.

    Bands of GROUP_M tile-rows; inside a band a GROUP_M-row triangle, then full columns of GROUP_M,
    so programs that run together share panels in L2. `pid * 0` makes every loop-carried value a
    tensor even when d == 1 is specialised to a constant.
    """
    num_t = (d + BLOCK_M - 1) // BLOCK_M + pid * 0
    i0 = pid * 0
    rem = pid
    g = tl.minimum(num_t, GROUP_M)
    band = g * (g + 1) // 2 + g * (num_t - g)
    while rem >= band:
        rem -= band
        i0 += GROUP_M
        g = tl.minimum(num_t - i0, GROUP_M)
        band = g * (g + 1) // 2 + g * (num_t - i0 - g)
    tri = g * (g + 1) // 2
    # In the triangle, column c holds c + 1 tiles: invert c (c + 1) / 2 <= rem, then fix rounding.
    c = ((tl.sqrt((8 * rem + 1).to(tl.float32)) - 1.0) * 0.5).to(tl.int32)
    c = tl.where((c + 1) * (c + 2) // 2 <= rem, c + 1, c)
    c = tl.where(c * (c + 1) // 2 > rem, c - 1, c)
    rect = rem - tri
    g_safe = tl.maximum(g, 1)
    tile_i = tl.where(rem < tri, i0 + rem - c * (c + 1) // 2, i0 + rect % g_safe)
    tile_j = tl.where(rem < tri, i0 + c, i0 + g + rect // g_safe)
    return tile_i, tile_j


@triton.autotune(
    configs=_configs(),
    key=["d", "n_bucket", "HAS_MASK", "USE_TMA", "MIRROR", "CHUNK_ROWS"],
    prune_configs_by={"early_config_prune": _prune_configs},
    # Autotuning runs the kernel several times; the accumulator must not keep those sums.
    restore_value=["Out_ptr"],
    **autotune_cache_kwargs(),
)
@triton.heuristics({
    "EVEN_N": lambda args: args["N"] % args["BLOCK_K"] == 0,
    "EVEN_D": lambda args: args["d"] % args["BLOCK_M"] == 0,
})
@triton.jit
def _covariance_kernel(
    X_ptr, X_desc, Mask_ptr, Out_ptr,
    N, d, n_bucket, splits,
    stride_x_row, stride_out_row,
    HAS_MASK: tl.constexpr, USE_TMA: tl.constexpr, MIRROR: tl.constexpr, ATOMIC: tl.constexpr,
    IEEE_FP32: tl.constexpr, INTERPRET_BF16: tl.constexpr, CHUNK_ROWS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    EVEN_N: tl.constexpr, EVEN_D: tl.constexpr,
):
    pid = tl.program_id(0)
    # n_bucket only keys the autotuner (N rounded to a power of two).
    # The grid's second axis is the row range: blocks launch range by range, so programs running
    # together read the same rows. (Deriving tile and range from one axis folds to constants when
    # d == 1 is specialised, which crashed Triton 3.6's TritonGPUCoalesce pass.)
    r = tl.program_id(1)
    tile_i, tile_j = upper_tile(pid, d, BLOCK_M, GROUP_M)
    num_it = tl.cdiv(N, BLOCK_K)
    it0 = (num_it * r) // splits
    it1 = (num_it * (r + 1)) // splits

    offs_i = tile_i * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_j = tile_j * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_k = tl.arange(0, BLOCK_K)
    col_ok_i = offs_i < d
    col_ok_j = offs_j < d
    # A scalar row pointer advances by BLOCK_K rows per step (no 32-bit overflow for huge N) and
    # the per-element offsets stay loop-invariant 32-bit values: fewer registers than pointer tiles.
    a_offs = offs_k[:, None] * stride_x_row + offs_i[None, :]
    b_offs = offs_k[:, None] * stride_x_row + offs_j[None, :]
    x_rows = X_ptr + (it0 * BLOCK_K).to(tl.int64) * stride_x_row

    FLUSH_ITERS: tl.constexpr = CHUNK_ROWS // BLOCK_K
    acc = tl.zeros((BLOCK_M, BLOCK_M), dtype=tl.float32)
    mid = tl.zeros((BLOCK_M, BLOCK_M), dtype=tl.float32)
    for it in range(it0, it1):
        if USE_TMA:
            # Out-of-range rows and columns arrive as zeros (the descriptor's padding).
            a = X_desc.load([it * BLOCK_K, tile_i * BLOCK_M])
            b = X_desc.load([it * BLOCK_K, tile_j * BLOCK_M])
        elif HAS_MASK:
            # Dropped rows load as 0 on both sides: exact zero contribution, never read.
            rows = it * BLOCK_K + offs_k
            keep = rows < N
            m = tl.load(Mask_ptr + rows, mask=keep, other=0)
            keep = keep & (m != 0)
            a = tl.load(x_rows + a_offs, mask=keep[:, None] & col_ok_i[None, :], other=0.0)
            b = tl.load(x_rows + b_offs, mask=keep[:, None] & col_ok_j[None, :], other=0.0)
        elif EVEN_N and EVEN_D:
            a = tl.load(x_rows + a_offs)
            b = tl.load(x_rows + b_offs)
        else:
            rows = it * BLOCK_K + offs_k
            keep = rows < N
            a = tl.load(x_rows + a_offs, mask=keep[:, None] & col_ok_i[None, :], other=0.0)
            b = tl.load(x_rows + b_offs, mask=keep[:, None] & col_ok_j[None, :], other=0.0)
        if INTERPRET_BF16:
            # The interpreter stores bf16 as raw uint16 and its dot would multiply the bit patterns.
            # Upcasting is exact, and bf16 products are exact in fp32, so the math is unchanged.
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        if IEEE_FP32:
            acc = tl.dot(tl.trans(a), b, acc, input_precision="ieee")
        else:
            acc = tl.dot(tl.trans(a), b, acc)
        if it % FLUSH_ITERS == FLUSH_ITERS - 1:
            # Short chunks keep the MMA accumulator small (its error is relative to its own size);
            # mid sums them with round-to-nearest CUDA-core adds, which are unbiased.
            mid += acc
            acc = acc * 0.0  # cheaper than a zero tile (one FMUL vs two moves per register)
        x_rows += BLOCK_K * stride_x_row

    tile = mid.to(tl.float64) + acc.to(tl.float64)
    if tile_i == tile_j:
        # A diagonal tile is symmetric only up to summation order; average it with its transpose
        # (the same rule as covariance_ref), which is exactly symmetric.
        tile = 0.5 * (tile + tl.trans(tile))
    # Both copies get the same float64 addend, so an exactly symmetric C stays exactly symmetric.
    upper = Out_ptr + offs_i.to(tl.int64)[:, None] * stride_out_row + offs_j[None, :]
    upper_ok = col_ok_i[:, None] & col_ok_j[None, :]
    if ATOMIC:
        # Several programs add into this tile (one per row range): float64 atomics, upper form only.
        tl.atomic_add(upper, tile, mask=upper_ok, sem="relaxed")
    else:
        prev = tl.load(upper, mask=upper_ok, other=0.0)
        tl.store(upper, prev + tile, mask=upper_ok)
    if MIRROR:
        if tile_i != tile_j:
            lower = Out_ptr + offs_j.to(tl.int64)[:, None] * stride_out_row + offs_i[None, :]
            lower_ok = col_ok_j[:, None] & col_ok_i[None, :]
            prev_t = tl.load(lower, mask=lower_ok, other=0.0)
            tl.store(lower, prev_t + tl.trans(tile), mask=lower_ok)


def _n_bucket(n: int) -> int:
    """Power-of-two bucket of N for the autotuning key (tile choice depends on N only coarsely)."""
    return 1 << min(max(n - 1, 255).bit_length(), 17)


def tma_eligible(x: torch.Tensor) -> bool:
    """Whether TMA can stream ``x`` here: Hopper or newer (or the interpreter), a 16-bit dtype,
    unit column stride and 16-byte aligned rows (a descriptor's base and strides must be)."""
    if TensorDescriptor is None or x.dtype not in (torch.float16, torch.bfloat16) or x.stride(1) != 1:
        return False
    if (x.data_ptr() % 16) or (x.stride(0) * x.element_size()) % 16:
        return False
    if _INTERPRET:
        return True
    return x.is_cuda and torch.cuda.get_device_capability(x.device)[0] >= 9


def covariance_triton(
    x: torch.Tensor,
    mask: torch.Tensor | None,
    out: torch.Tensor,
    *,
    symmetric: bool = True,
    tma: bool | None = None,
    chunk_rows: int | None = None,
    config: triton.Config | None = None,
    splits: int | None = None,
) -> torch.Tensor:
    """Add X^T diag(mask) X into ``out`` with the Triton kernel and return ``out``.

    Args:
        x: [N, d] activations with stride(1) == 1 (any row stride); float16, bfloat16 or float32.
            float64 inputs are handed to the float64 reference.
        mask: None, or a contiguous uint8 [N] tensor of 0/1 (rows with 0 are skipped).
        out: float64 [d, d] accumulator on x's device (stride(1) == 1, or it is copied).
        symmetric: True: both triangles are updated, so an exactly symmetric ``out`` stays so.
            False: only the upper triangle (diagonal included) is guaranteed; the lower one is
            stale (only the diagonal tiles write theirs); mirror once after the last call
            (``slicekit.ops.symmetrize_``).
        tma: force TMA loads on (where eligible) or off; None picks them when eligible.
        chunk_rows: rows summed in the fp32 MMA accumulator between flushes (multiple of 64;
            default ``CHUNK_ROWS``). Larger is faster and less accurate; for benchmarks only.
        config: launch this triton.Config instead of autotuning (benchmarks sweeping chunk_rows).
        splits: row ranges per tile, their sums added atomically (``symmetric=False`` only); None:
            whole tiles for ``symmetric=True``; else SLICEKIT_COV_TRITON_SPLITS when set, else
            ``choose_splits`` on CUDA (launches with fewer tiles than can run at once), whole tiles
            elsewhere.

    Returns:
        ``out``, updated in place.

    Equivalent to: ``slicekit.ops.covariance.covariance_ref``.
    """
    if x.dtype == torch.float64:
        from slicekit.ops.covariance import covariance_ref

        return covariance_ref(x, mask, out)
    if x.dim() != 2 or x.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"covariance_triton: x must be a 2-D float16/bfloat16/float32 tensor, got "
                         f"{x.dtype} {tuple(x.shape)}")
    n, d = x.shape
    if out.dtype != torch.float64 or tuple(out.shape) != (d, d):
        raise ValueError(f"covariance_triton: out must be float64 [{d}, {d}], got {out.dtype} {tuple(out.shape)}")
    if mask is not None and (mask.dtype != torch.uint8 or tuple(mask.shape) != (n,)):
        raise ValueError(f"covariance_triton: mask must be uint8 [{n}], got {mask.dtype} {tuple(mask.shape)}")
    chunk = CHUNK_ROWS if chunk_rows is None else int(chunk_rows)
    if chunk < 64 or chunk % 64:
        raise ValueError(f"covariance_triton: chunk_rows must be a positive multiple of 64, got {chunk}")
    env_splits = os.environ.get("SLICEKIT_COV_TRITON_SPLITS", "")
    if splits is None and env_splits and not symmetric:
        if not env_splits.isdigit() or int(env_splits) < 1:
            raise ValueError(f"covariance_triton: SLICEKIT_COV_TRITON_SPLITS must be a positive integer, got "
                             f"{env_splits!r}")
        splits = int(env_splits)
    if splits is not None and (splits < 1 or (splits > 1 and symmetric)):
        raise ValueError(f"covariance_triton: splits must be >= 1, and 1 with symmetric=True (each mirror pair "
                         f"must get the same sums in the same order), got {splits}")
    if n == 0 or d == 0:
        return out
    if x.stride(1) != 1:
        x = x.contiguous()
    use_tma = tma_eligible(x) if tma is None else bool(tma) and tma_eligible(x)
    if mask is not None:
        if use_tma:
            # TMA streams whole panels: gather the kept rows instead of predicating the loads.
            x = x[mask.bool()]
            mask = None
            if x.shape[0] == 0:
                return out
            use_tma = tma_eligible(x)
        elif not mask.is_contiguous():
            mask = mask.contiguous()
    target = out if out.stride(1) == 1 else out.contiguous()
    for start in range(0, x.shape[0], LAUNCH_ROWS):
        seg = x[start:start + LAUNCH_ROWS]
        seg_mask = None if mask is None else mask[start:start + LAUNCH_ROWS]
        _launch(seg, seg_mask, target, use_tma, symmetric, chunk, config, splits)
    if target is not out:
        out.copy_(target)
    return out


def _launch(x, mask, out, use_tma, symmetric, chunk, config, splits):
    n, d = x.shape
    interpret_bf16 = _INTERPRET and x.dtype == torch.bfloat16
    cfg = None
    if config is not None or not (_INTERPRET or n * d * d >= _AUTOTUNE_MIN_WORK):
        # Small problems: a fixed config. Autotuning costs a compile per config and key, which
        # only pays off for the large calibration shapes.
        cfg = config or _SMALL_CONFIG
    desc = x
    if use_tma:
        block = [cfg.kwargs["BLOCK_K"], cfg.kwargs["BLOCK_M"]] if cfg is not None else tma_block(d)
        desc = TensorDescriptor.from_tensor(x, block_shape=block)

    if splits is None:
        splits = 1
        if x.is_cuda and not symmetric and not _INTERPRET:
            block_m = cfg.kwargs["BLOCK_M"] if cfg is not None else tma_block(d)[1]
            t = triton.cdiv(d, block_m)
            sms = torch.cuda.get_device_properties(x.device).multi_processor_count
            splits = choose_splits(t * (t + 1) // 2, n, sms * _PROGRAMS_PER_SM.get(block_m, 1))
    splits = max(1, min(splits, triton.cdiv(n, 32)))  # every range at least one 32-row block

    def grid(meta):
        t = triton.cdiv(d, meta["BLOCK_M"])
        return (t * (t + 1) // 2, splits)

    args = (x, desc, mask if mask is not None else x, out, n, d, _n_bucket(n), splits, x.stride(0), out.stride(0))
    meta = dict(HAS_MASK=mask is not None, USE_TMA=use_tma, MIRROR=symmetric, ATOMIC=splits > 1,
                IEEE_FP32=x.dtype == torch.float32 or interpret_bf16, INTERPRET_BF16=interpret_bf16,
                CHUNK_ROWS=chunk)
    with torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext():
        if cfg is None:
            _covariance_kernel[grid](*args, **meta)
        else:
            _covariance_kernel.fn[grid](*args, **meta, **cfg.kwargs, num_warps=cfg.num_warps,
                                        num_stages=cfg.num_stages)
