"""Triton rotate-and-slice: readers C = W @ Q[:, :k] (dim=1), writers C = Q[:, :k]^T @ W (dim=0).

Only the k kept columns (rows) of the rotated weight are computed, in one GEMM with an fp32
accumulator, and the result is rounded once to the output dtype.

Precision without float64 arithmetic. W is exact in its 16-bit dtype; Q is float64 (or float32).
Rounding Q to 16 bits would add an error as large as the final rounding itself, so Q is split
once per call on the host side into two 16-bit matrices of W's dtype,

    Q * 2^s = Q_hi + Q_lo,   Q_hi = rn16(Q * 2^s),   Q_lo = rn16(Q * 2^s - Q_hi),

and the kernel accumulates W @ Q_hi + W @ Q_lo into ONE fp32 tile: a product of two 16-bit
values is exact in fp32, so the only errors left are Q's residual |Q - Q_hi - Q_lo| (2^-22 of Q
for fp16, 2^-16 for bf16), the fp32 sums and the final rounding. 2^s is a power of two chosen
so that the largest |Q| lands just below 2^15: Q_hi cannot overflow fp16 and Q_lo stays clear
of fp16's subnormals; the kernel multiplies by 2^-s at the end, which is exact.

Why on the host and not in the kernel: every output tile row reloads the same Q tiles
(m / BLOCK_M times), so an in-kernel split would redo it ~100x, would have to stream fp32/fp64 Q
(as many bytes as Q_hi + Q_lo together, or twice as many), and would put an fp64->fp16 convert
between the global load and the tensor-core operand in shared memory, defeating the async
copy pipeline. The host-side split is one elementwise Triton pass over d x k values (~30 us for
4096 x 3072) against a GEMM of ~1 ms.

Tensor cores truncate. The MMA unit adds each k=16 block of exact products to its fp32
accumulator and rounds toward zero (Fasi et al. 2021 measured this on V100/T4/A100), so one
accumulator carried over all of K drifts toward zero by ~(K/16) * 2^-25 of the result. Two ways
to keep that drift away from the 16-bit rounding budget, picked by ``flush``:
  * flush=True (default): each K step's hi + lo products go into a fresh tile that is added to the
    running fp32 sum with an ordinary round-to-nearest FADD; what is left is a random, not a
    biased, error of ~2^-25 * sqrt(d / BLOCK_K). The add needs the MMA result, so Triton waits
    for the tensor cores at the end of every K step (wgmma.wait_group 0); long K steps
    (BLOCK_K = 128 configs) amortise the wait.
  * flush=False: hi and lo products go into two separate accumulators. Only the hi one is large,
    so the drift comes from d/16 truncations instead of 2d/16, and the two independent chains let
    Triton keep MMAs in flight across K steps (wait_group 2). Faster; for fp16 at d = 8192 the
    drift is a few % of the half-ulp.
Both hold two fp32 tiles per thread, so tiles are at most 128 x 128 with 8 warps. The benchmark
measures both modes ("triton" and "triton_dual") with their errors.

Trade-off: two tensor-core passes, i.e. twice the FLOPs of a plain fp16 GEMM, against float64
GEMM for the reference path (H200: ~990 vs ~67 TFLOP/s peak). The speedup over the float64
full-then-slice path is therefore bounded by (d / k) * (R16 / R64) / 2 with R the achieved rates:
~8x at k = 0.75 d for R16 = 650 and R64 = 60 TFLOP/s.

float32 weights, and 16-bit weights asked for a float32/float64 result (a bf16 hi + lo pair holds
Q to 2^-16 only), take one "ieee" fp32 dot (FMA, no TF32): fp32 models exist for validation,
where fp32-GEMM-grade error at every K matters more than speed; a bf16 3-pass split keeps ~16 of
fp32's 24 bits and TF32x3 loses up to 2^-21 per product, which at small K exceeds 2x the error of
torch's own fp32 GEMM. float64 weights are multiplied by torch (cuBLAS DGEMM): that is the
reference computation itself and Triton has no faster exact float64 path.
"""
from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

from ._autotune import autotune_cache_kwargs

_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
# Two work-arounds for Triton's CPU interpreter, so that interpreted results equal compiled ones:
# it multiplies bfloat16 tiles as raw integers (widening both tiles to fp32 first is exact, and so
# are the products), and it truncates fp32 -> bfloat16 where compiled code rounds to nearest even.
_INTERPRETER_FIXES = tl.constexpr(_INTERPRET)

# Largest |Q * 2^s| stays below this power of two: fp16's max is 65504, and rounding to
# nearest can lift a value at most to the next power of two, 2^15 = 32768.
_SPLIT_EXP = 15

# K-loop modes of the GEMM kernel (constexpr SPLIT).
_SPLIT_NONE = 0  # one fp32 "ieee" dot (float32 weights, or outputs wider than 16 bits)
_SPLIT_B = 1  # readers: A = W, B = Q_hi and Q_lo
_SPLIT_A = 2  # writers: A = Q_hi^T and Q_lo^T, B = W


def _cfg(bm, bn, bk, warps, stages, group=8):
    meta = {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": group}
    return triton.Config(meta, num_warps=warps, num_stages=stages)


if _INTERPRET:
    # The CPU interpreter runs every program serially in numpy: one config, tiles large enough
    # to keep the number of interpreted steps small, small enough to cross edges in tests.
    _CONFIGS_16 = [_cfg(64, 64, 64, 4, 1, group=2)]
    _CONFIGS_32 = _CONFIGS_16
else:
    _CONFIGS_16 = [
        # Hopper (227 KB shared memory per block). The split operand is loaded twice per K step,
        # so a stage holds BM*BK + 2*BK*BN (or 2*BM*BK + BK*BN) 16-bit elements.
        # Both accumulation modes keep two fp32 tiles live: 128 x 128 with 8 warps at most.
        _cfg(128, 128, 64, 8, 4),
        _cfg(128, 128, 64, 8, 3),
        _cfg(128, 128, 128, 8, 2),
        _cfg(64, 256, 64, 8, 3),
        # Ampere (163 KB) and small problems; the last one is the default for small problems.
        _cfg(128, 128, 32, 8, 4),
        _cfg(64, 128, 64, 4, 4),
    ]
    # float32 weights: the FMA dot holds both operands in registers; larger tiles spill.
    _CONFIGS_32 = [_cfg(64, 64, 32, 8, 3)]


def _signature(c):
    return tuple(sorted(c.kwargs.items())), c.num_warps, c.num_stages


@functools.lru_cache(maxsize=None)
def _smem_limit(device_index: int) -> int:
    """Opt-in shared memory per block of a CUDA device (H100/H200: 227 KB)."""
    try:
        props = torch.cuda.get_device_properties(device_index)
        return int(getattr(props, "shared_memory_per_block_optin", 0)) or 232448
    except Exception:  # an old torch without the attribute
        return 232448


def _prune_configs(configs, named_args, **kwargs):
    """Drop configs that overflow shared memory or registers; small problems get one config."""
    args = {**named_args, **kwargs}  # constexprs passed by keyword arrive in kwargs
    M, N, K, split = args["M"], args["N"], args["K"], args["SPLIT"]
    if split == _SPLIT_NONE:
        wanted = {_signature(c) for c in _CONFIGS_32}
        return [c for c in configs if _signature(c) in wanted]
    wanted = {_signature(c) for c in _CONFIGS_16}
    n_a = 2 if split == _SPLIT_A else 1
    n_b = 2 if split == _SPLIT_B else 1
    tiles = 2  # flush: running sum + this step's tile; no flush: hi and lo accumulators
    c_ptr = args["C_ptr"]
    limit = _smem_limit(c_ptr.device.index or 0) if c_ptr.device.type == "cuda" else 232448
    fits = []
    for c in configs:
        if _signature(c) not in wanted:
            continue
        bm, bn, bk = c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"]
        smem = c.num_stages * (n_a * bm * bk + n_b * bk * bn) * 2
        acc_regs = tiles * bm * bn // (32 * c.num_warps)
        if smem <= limit and acc_regs <= 128:
            fits.append(c)
    fits = fits or [c for c in configs if _signature(c) in wanted][-1:]
    if M * N * K <= 1 << 27:
        # Timing every config costs more than a small product itself (tests, tiny models).
        return fits[-1:]
    return fits


@triton.jit
def _dot16(a, b, acc):
    """acc + a @ b for 16-bit tiles, fp32 accumulator."""
    if _INTERPRETER_FIXES:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, acc)


@triton.jit
def _round_to(x, dtype: tl.constexpr):
    """fp32 tile -> ``dtype``, rounded to nearest even."""
    if _INTERPRETER_FIXES:
        if dtype == tl.bfloat16:
            # Round the fp32 bits to bfloat16's 8-bit mantissa (nearest, ties to even), so the
            # interpreter's truncating cast below becomes exact.
            bits = x.to(tl.uint32, bitcast=True)
            bits = (bits + (0x7FFF + ((bits >> 16) & 1))) & 0xFFFF0000
            x = bits.to(tl.float32, bitcast=True)
    return x.to(dtype)


@triton.autotune(
    configs=list({_signature(c): c for c in _CONFIGS_16 + _CONFIGS_32}.values()),
    key=["M", "N", "K", "SPLIT", "FLUSH"],
    prune_configs_by={"early_config_prune": _prune_configs},
    **autotune_cache_kwargs(),
)
@triton.heuristics({"EVEN_K": lambda args: args["K"] % args["BLOCK_K"] == 0})
@triton.jit
def _rotate_slice_kernel(
    A_ptr, A_LO_ptr, B_ptr, B_LO_ptr, C_ptr, INV_SCALE_ptr,
    M, N, K,
    stride_a_row, stride_a_col,
    stride_b_row, stride_b_col,
    stride_c_row, stride_c_col,
    SPLIT: tl.constexpr, FLUSH: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    EVEN_K: tl.constexpr,
):
    """C[M, N] = (A @ B) * inv_scale, with A (or B) given as a hi + lo pair sharing strides."""
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    # Grouped order: GROUP_M row tiles sweep the columns together, so their B panels stay in L2.
    num_pid_in_group = GROUP_M * num_pid_n
    group_id = pid // num_pid_in_group
    first_pid_m = group_id * GROUP_M
    group_size_m = min(num_pid_m - first_pid_m, GROUP_M)
    pid_m = first_pid_m + ((pid % num_pid_in_group) % group_size_m)
    pid_n = (pid % num_pid_in_group) // group_size_m

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    mask_m = offs_m < M
    mask_n = offs_n < N
    # int64 row offsets: an embedding table can exceed 2^31 elements.
    a_off = offs_m.to(tl.int64)[:, None] * stride_a_row + offs_k[None, :] * stride_a_col
    b_off = offs_k[:, None] * stride_b_row + offs_n.to(tl.int64)[None, :] * stride_b_col

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_lo = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)  # FLUSH=False only
    for kt in range(0, tl.cdiv(K, BLOCK_K)):
        if EVEN_K:
            mask_a = mask_m[:, None]
            mask_b = mask_n[None, :]
        else:
            k_left = K - kt * BLOCK_K
            mask_a = mask_m[:, None] & (offs_k[None, :] < k_left)
            mask_b = (offs_k[:, None] < k_left) & mask_n[None, :]
        a = tl.load(A_ptr + a_off, mask=mask_a, other=0.0)
        b = tl.load(B_ptr + b_off, mask=mask_b, other=0.0)
        if SPLIT == 0:
            # 16-bit weights widen exactly; fp32 x fp32 products are rounded once, as in torch's fp32 GEMM.
            acc = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
        else:
            if SPLIT == 1:
                a2 = a
                b2 = tl.load(B_LO_ptr + b_off, mask=mask_b, other=0.0)
            else:
                a2 = tl.load(A_LO_ptr + a_off, mask=mask_a, other=0.0)
                b2 = b
            # Both products are exact in fp32 (see the module docstring for the two modes).
            if FLUSH:
                part = _dot16(a, b, None)
                acc += _dot16(a2, b2, part)
            else:
                acc = _dot16(a, b, acc)
                acc_lo = _dot16(a2, b2, acc_lo)
        a_off += BLOCK_K * stride_a_col
        b_off += BLOCK_K * stride_b_row

    if not FLUSH:
        acc += acc_lo
    # inv_scale is a power of two: undoing the split's scaling is exact.
    acc = acc * tl.load(INV_SCALE_ptr)
    c_ptrs = C_ptr + offs_m.to(tl.int64)[:, None] * stride_c_row + offs_n.to(tl.int64)[None, :] * stride_c_col
    tl.store(c_ptrs, _round_to(acc, C_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


@triton.jit
def _split_hi_lo_kernel(
    Q_ptr, HI_ptr, LO_ptr, SCALE_ptr,
    R, C,
    stride_q_row, stride_q_col,
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """HI + LO = Q * scale for a [R, C] view of Q; HI and LO are contiguous [R, C]."""
    offs_r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask = (offs_r[:, None] < R) & (offs_c[None, :] < C)
    q = tl.load(Q_ptr + offs_r.to(tl.int64)[:, None] * stride_q_row + offs_c.to(tl.int64)[None, :] * stride_q_col,
                mask=mask, other=0.0)
    # float64 makes x and x - hi exact for float32 and float64 Q alike (scale is a power of two).
    x = q.to(tl.float64) * tl.load(SCALE_ptr).to(tl.float64)
    # Narrowing goes through fp32 (Triton's interpreter cannot cast float64 to bfloat16). The
    # double rounding may move hi by one unit, which costs nothing: the remainder x - hi is
    # formed exactly in float64 whatever hi is, and lo is within half a 16-bit unit of it.
    hi = _round_to(x.to(tl.float32), HI_ptr.dtype.element_ty)
    lo = _round_to((x - hi.to(tl.float64)).to(tl.float32), LO_ptr.dtype.element_ty)
    out = offs_r.to(tl.int64)[:, None] * C + offs_c[None, :]
    tl.store(HI_ptr + out, hi, mask=mask)
    tl.store(LO_ptr + out, lo, mask=mask)


def _pow2_scales(q_view: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(2^s, 2^-s) as fp32 scalars with max|q| * 2^s < 2^15, built on the device (no host sync).

    The powers of two are assembled from their exponent bits, which is exact; exp2/ldexp on
    the device are not guaranteed to be.
    """
    amax = torch.linalg.vector_norm(q_view, float("inf")).to(torch.float32)  # max|q| without an |q| copy
    _, e = torch.frexp(amax)  # amax = m * 2^e with m in [0.5, 1): amax < 2^e (e = 0 for amax = 0)
    s = (_SPLIT_EXP - e.to(torch.int32)).clamp(-126, 126)  # 2^s and 2^-s stay normal fp32 numbers
    scale = ((s + 127) << 23).to(torch.int32).view(torch.float32).reshape(1)
    inv_scale = ((127 - s) << 23).to(torch.int32).view(torch.float32).reshape(1)
    return scale, inv_scale


def split_hi_lo(q_view: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split a [R, C] float32/float64 view (any strides) into 16-bit hi + lo parts.

    Returns contiguous ``hi``, ``lo`` of shape [R, C] in ``dtype`` and a one-element fp32
    ``inv_scale`` (a power of two) such that ``(hi + lo) * inv_scale`` equals ``q_view`` to
    ~2^-22 (fp16) / 2^-16 (bf16) of max|q|.
    """
    R, C = q_view.shape
    hi = torch.empty((R, C), dtype=dtype, device=q_view.device)
    lo = torch.empty((R, C), dtype=dtype, device=q_view.device)
    scale, inv_scale = _pow2_scales(q_view)
    if R and C:
        block = 32 if _INTERPRET else 64
        grid = (triton.cdiv(R, block), triton.cdiv(C, block))
        _split_hi_lo_kernel[grid](q_view, hi, lo, scale, R, C, q_view.stride(0), q_view.stride(1),
                                  BLOCK_R=block, BLOCK_C=block, num_warps=4)
    return hi, lo, inv_scale


def _launch(a, a_lo, b, b_lo, c, inv_scale, split, flush):
    M, K = a.shape
    N = b.shape[1]
    grid = lambda meta: (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]),)  # noqa: E731
    _rotate_slice_kernel[grid](
        a, a_lo, b, b_lo, c, inv_scale,
        M, N, K,
        a.stride(0), a.stride(1), b.stride(0), b.stride(1), c.stride(0), c.stride(1),
        SPLIT=split, FLUSH=bool(flush),
    )


def rotate_slice_triton(
    weight: torch.Tensor, q: torch.Tensor, k: int, dim: int, out_dtype: torch.dtype, *, flush: bool | None = None
) -> torch.Tensor:
    """Rotate-and-slice one weight with the Triton kernel.

    Args:
        weight: dim=1: [m, d] reader; dim=0: [d, n] writer. float16, bfloat16 or float32 with any
            strides (a weight with no unit stride is copied once); float64 goes to torch.
        q: [d, >=k] float32 or float64 orthogonal basis (any strides).
        k: kept width, 1 <= k <= q.shape[1].
        dim: 1 for readers, 0 for writers.
        out_dtype: dtype of the result (rounded once from the fp32 accumulator).
        flush: True adds each K step's tensor-core tile into the running sum with
            round-to-nearest FADDs (no accumulation drift); False keeps hi and lo products in two
            accumulators (faster, a small drift at large d; see the module docstring). None (the
            default) reads SLICEKIT_ROTATE_FLUSH (default "1").

    Returns:
        [m, k] (dim=1) or [k, n] (dim=0), contiguous, in ``out_dtype``.

    Equivalent to: ``slicekit.ops.rotate_slice_ref``.
    """
    if dim not in (0, 1):
        raise ValueError(f"rotate_slice_triton: dim must be 0 or 1, got {dim}")
    if q.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"rotate_slice_triton: q must be float32 or float64, got {q.dtype}")
    if flush is None:
        flush = os.environ.get("SLICEKIT_ROTATE_FLUSH", "1") not in ("0", "false", "False", "")
    qk = q[:, :k]
    if weight.dtype == torch.float64:
        # Exact float64 is only reachable through DGEMM; this IS the reference computation.
        q64 = qk.to(torch.float64)
        return (weight @ q64 if dim == 1 else q64.T @ weight).to(out_dtype).contiguous()
    if weight.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise TypeError(
            f"rotate_slice_triton: weight dtype {weight.dtype} not supported (float16, bfloat16, float32, float64)"
        )
    if weight.stride(0) != 1 and weight.stride(1) != 1:
        weight = weight.contiguous()  # gather loads along both dims would be far slower than one copy
    if dim == 1:
        m, d = weight.shape
        out = torch.empty((m, k), dtype=out_dtype, device=weight.device)
    else:
        d, n = weight.shape
        out = torch.empty((k, n), dtype=out_dtype, device=weight.device)
    if out.numel() == 0:
        return out
    if d == 0:
        return out.zero_()

    if weight.dtype == torch.float32 or out_dtype not in (torch.float16, torch.bfloat16):
        # A 16-bit hi + lo pair holds Q to 2^-22 (fp16) / 2^-16 (bf16): plenty below a 16-bit
        # output's rounding, not below an fp32 one. Wider outputs take the fp32 FMA path.
        q32 = qk if qk.dtype == torch.float32 else qk.to(torch.float32)
        one = torch.ones(1, dtype=torch.float32, device=weight.device)
        if dim == 1:
            _launch(weight, weight, q32, q32, out, one, _SPLIT_NONE, False)
        else:
            _launch(q32.T, q32.T, weight, weight, out, one, _SPLIT_NONE, False)
        return out

    if dim == 1:
        q_hi, q_lo, inv_scale = split_hi_lo(qk, weight.dtype)  # [d, k]
        _launch(weight, weight, q_hi, q_lo, out, inv_scale, _SPLIT_B, flush)
    else:
        qt_hi, qt_lo, inv_scale = split_hi_lo(qk.T, weight.dtype)  # [k, d]: K-contiguous A operand
        _launch(qt_hi, qt_lo, weight, weight, out, inv_scale, _SPLIT_A, flush)
    return out
