"""Triton fused residual update of a sliced model: Y = X @ S + H @ W^T (+ b), one kernel.

One output tile [BLOCK_M, BLOCK_N] of Y is accumulated in fp32 over two K ranges -- first
K = k_in over (X, S), then K = n over (H, W^T) -- and written once in X's dtype. Against the
unfused form (a linear, then an addmm) this saves a launch and a round trip of Y through memory,
and rounds Y once instead of twice.

Main trade-off: decode (M = 1..256 tokens) is bound by reading S and W, so its tiles are short
in M (16..64 rows; tensor-core tiles cannot be shorter than 16) and narrow in N (16..64 output
columns), which yields 50..200 programs for k_out = 3072 -- enough to keep all 132 H200 SMs
streaming weights without a split-K reduction (which would need atomics or a second pass).
Prefill (M up to 16384) is compute-bound and uses wide 128 x 128..256 tiles. The autotuner
keys on a power-of-two bucket of M, so neither regime retunes per sequence length.

float32 inputs use an "ieee" fp32 dot (FMA, no TF32) so that fp32 models keep fp32-GEMM-grade
error; float64 inputs go to torch (cuBLAS DGEMM; float64 exists only for invariance checks).
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from ._autotune import autotune_cache_kwargs
from .rotate_slice import _dot16, _round_to

_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
_SUPPORTED = (torch.float16, torch.bfloat16, torch.float32)


def _signature(c):
    return tuple(sorted(c.kwargs.items())), c.num_warps, c.num_stages


def _cfg(bm, bn, bk, warps, stages, group=8, split=1):
    meta = {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": group, "SPLIT_K": split}
    return triton.Config(meta, num_warps=warps, num_stages=stages)


# Split-K (decode only) needs a counter per output tile that the last split resets to zero. One
# buffer per device, allocated once and never freed: a captured CUDA graph keeps its address.
_MAX_SPLIT = 8
_COUNTER_CAPACITY = 1 << 16
_counters: dict = {}


def _tile_counters(device: torch.device, needed: int) -> torch.Tensor | None:
    if needed > _COUNTER_CAPACITY:
        return None
    buf = _counters.get(device)
    if buf is None:
        buf = _counters[device] = torch.zeros(_COUNTER_CAPACITY, dtype=torch.int32, device=device)
    return buf


if _INTERPRET:
    # The CPU interpreter runs programs serially in numpy: one small tile keeps tests fast.
    _BUCKET_CONFIGS = {"all": [_cfg(32, 64, 64, 4, 1, 2)]}
else:
    _BUCKET_CONFIGS = {
        # M <= 16: one row tile; narrow column tiles and long K steps keep many loads in flight.
        # Split-K variants: k_out = 3072 gives only 48..192 column tiles, 0.4..1.5 waves on 132 SMs;
        # splitting K (partials in fp32, the tile's last split sums them: still one rounding) gives
        # every SM several weight streams.
        "decode": [_cfg(16, 16, 256, 4, 4), _cfg(16, 32, 256, 4, 4), _cfg(16, 32, 128, 4, 6), _cfg(16, 64, 128, 4, 4),
                   _cfg(16, 32, 256, 4, 4, split=4), _cfg(16, 64, 256, 4, 4, split=4), _cfg(16, 32, 128, 4, 4, split=8),
                   _cfg(16, 64, 128, 4, 4, split=8), _cfg(16, 16, 256, 4, 4, split=2)],
        # 16 < M <= 256: still weight-bound, but a row tile can now feed a wider MMA.
        "small": [_cfg(32, 32, 128, 4, 4), _cfg(64, 32, 128, 4, 4), _cfg(64, 64, 64, 4, 4), _cfg(64, 128, 64, 4, 4)],
        # M > 256: compute-bound GEMM tiles.
        "large": [_cfg(128, 128, 64, 8, 4), _cfg(128, 256, 64, 8, 3), _cfg(128, 128, 64, 4, 4),
                  _cfg(64, 128, 64, 4, 4)],
        # float32 (FMA dot, both operands in registers: larger tiles spill), any M.
        "fp32": [_cfg(16, 32, 64, 4, 3), _cfg(32, 64, 32, 4, 3), _cfg(64, 64, 32, 8, 3)],
    }
_ALL_CONFIGS = list({_signature(c): c for cs in _BUCKET_CONFIGS.values() for c in cs}.values())
_force_config = None  # tests: a Config to run instead of the autotuned choice
# Split-K configs the tests pin through ``_force_config`` (small tiles: fast in the interpreter).
TEST_SPLIT_CONFIGS = [_cfg(16, 32, 32, 4, 1, 2, split=2), _cfg(16, 16, 64, 4, 1, 2, split=3),
                      _cfg(16, 16, 32, 4, 1, 2, split=8)]


def _m_bucket(M: int) -> int:
    """Power-of-two bucket of the token count, the autotuner's key (clamped to [16, 16384])."""
    return max(16, min(16384, triton.next_power_of_2(max(M, 1))))


def _prune_configs(configs, named_args, **kwargs):
    if _INTERPRET:
        return configs
    args = {**named_args, **kwargs}  # constexprs passed by keyword arrive in kwargs
    bucket = args["M_BUCKET"]
    if args["X_FP32"] or args["H_FP32"]:
        name = "fp32"
    else:
        name = "decode" if bucket <= 16 else "small" if bucket <= 256 else "large"
    wanted = {_signature(c) for c in _BUCKET_CONFIGS[name]}
    if not args["CAN_SPLIT"]:
        wanted = {w for w in wanted if dict(w[0])["SPLIT_K"] == 1}
    return [c for c in configs if _signature(c) in wanted] or configs[:1]



@triton.autotune(
    configs=_ALL_CONFIGS,
    key=["M_BUCKET", "K_IN", "N_H", "K_OUT"],
    prune_configs_by={"early_config_prune": _prune_configs},
    **autotune_cache_kwargs(),
)
@triton.heuristics({
    "EVEN_KX": lambda args: args["K_IN"] % args["BLOCK_K"] == 0,
    "EVEN_KH": lambda args: args["N_H"] % args["BLOCK_K"] == 0,
})
@triton.jit
def _shortcut_linear_kernel(
    X_ptr, S_ptr, H_ptr, W_ptr, BIAS_ptr, Y_ptr, WS_ptr, CNT_ptr,
    M, K_IN, N_H, K_OUT, M_BUCKET,
    stride_x_row, stride_x_col,
    stride_s_row, stride_s_col,
    stride_h_row, stride_h_col,
    stride_w_row, stride_w_col,
    stride_y_row, stride_y_col,
    HAS_BIAS: tl.constexpr, X_FP32: tl.constexpr, H_FP32: tl.constexpr,
    CAN_SPLIT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    SPLIT_K: tl.constexpr, EVEN_KX: tl.constexpr, EVEN_KH: tl.constexpr,
):
    pid = tl.program_id(0)
    pid_s = tl.program_id(1)  # which K split (always 0 without split-K)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(K_OUT, BLOCK_N)
    # Grouped order: GROUP_M row tiles sweep the columns together, so S and W panels stay in L2.
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
    mask_n = offs_n < K_OUT
    rows = offs_m.to(tl.int64)
    cols = offs_n.to(tl.int64)

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)

    # The two K ranges form one sequence of K tiles (X/S tiles, then H/W tiles); split pid_s takes
    # a contiguous run of it. Without split-K that run is everything.
    tiles_x = tl.cdiv(K_IN, BLOCK_K)
    tiles_all = tiles_x + tl.cdiv(N_H, BLOCK_K)
    per_split = tl.cdiv(tiles_all, SPLIT_K)
    t_begin = pid_s * per_split
    t_end = tl.minimum(t_begin + per_split, tiles_all)
    x_begin = tl.minimum(t_begin, tiles_x)
    x_end = tl.minimum(t_end, tiles_x)
    h_begin = tl.maximum(t_begin, tiles_x) - tiles_x
    h_end = tl.maximum(t_end, tiles_x) - tiles_x

    # K range 1: the shortcut, X [M, k_in] @ S [k_in, k_out].
    a_off = rows[:, None] * stride_x_row + (x_begin * BLOCK_K + offs_k[None, :]) * stride_x_col
    b_off = (x_begin * BLOCK_K + offs_k[:, None]) * stride_s_row + cols[None, :] * stride_s_col
    for kt in range(x_begin, x_end):
        if EVEN_KX:
            a = tl.load(X_ptr + a_off, mask=mask_m[:, None], other=0.0)
            b = tl.load(S_ptr + b_off, mask=mask_n[None, :], other=0.0)
        else:
            k_left = K_IN - kt * BLOCK_K
            a = tl.load(X_ptr + a_off, mask=mask_m[:, None] & (offs_k[None, :] < k_left), other=0.0)
            b = tl.load(S_ptr + b_off, mask=(offs_k[:, None] < k_left) & mask_n[None, :], other=0.0)
        if X_FP32:
            acc = tl.dot(a, b, acc, input_precision="ieee")
        else:
            acc = _dot16(a, b, acc)
        a_off += BLOCK_K * stride_x_col
        b_off += BLOCK_K * stride_s_row

    # K range 2: the writer, H [M, n] @ W^T, W stored [k_out, n] (nn.Linear layout).
    a_off = rows[:, None] * stride_h_row + (h_begin * BLOCK_K + offs_k[None, :]) * stride_h_col
    b_off = (h_begin * BLOCK_K + offs_k[:, None]) * stride_w_col + cols[None, :] * stride_w_row
    for kt in range(h_begin, h_end):
        if EVEN_KH:
            a = tl.load(H_ptr + a_off, mask=mask_m[:, None], other=0.0)
            b = tl.load(W_ptr + b_off, mask=mask_n[None, :], other=0.0)
        else:
            k_left = N_H - kt * BLOCK_K
            a = tl.load(H_ptr + a_off, mask=mask_m[:, None] & (offs_k[None, :] < k_left), other=0.0)
            b = tl.load(W_ptr + b_off, mask=(offs_k[:, None] < k_left) & mask_n[None, :], other=0.0)
        if H_FP32:
            acc = tl.dot(a, b, acc, input_precision="ieee")
        else:
            acc = _dot16(a, b, acc)
        a_off += BLOCK_K * stride_h_col
        b_off += BLOCK_K * stride_w_col

    mask_y = mask_m[:, None] & mask_n[None, :]
    y_ptrs = Y_ptr + rows[:, None] * stride_y_row + cols[None, :] * stride_y_col
    if SPLIT_K == 1:
        if HAS_BIAS:
            acc += tl.load(BIAS_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
        tl.store(y_ptrs, _round_to(acc, Y_ptr.dtype.element_ty), mask=mask_y)
    else:
        # Partials go to an fp32 workspace [SPLIT_K, M, K_OUT]; the split that arrives last at the
        # tile's counter sums them in split order (deterministic), rounds once, and re-arms the
        # counter. The barrier orders every warp's partial stores before the release of the
        # counter (the CUTLASS semaphore pattern).
        ws = WS_ptr + rows[:, None] * K_OUT + cols[None, :]
        tl.store(ws + pid_s * M * K_OUT, acc, mask=mask_y)
        tl.debug_barrier()
        tile = pid_m * num_pid_n + pid_n
        arrived = tl.atomic_add(CNT_ptr + tile, 1, sem="acq_rel", scope="gpu")
        if arrived == SPLIT_K - 1:
            total = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            for s in range(0, SPLIT_K):
                total += tl.load(ws + s * M * K_OUT, mask=mask_y, other=0.0, cache_modifier=".cg")
            if HAS_BIAS:
                total += tl.load(BIAS_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
            tl.store(y_ptrs, _round_to(total, Y_ptr.dtype.element_ty), mask=mask_y)
            tl.atomic_xchg(CNT_ptr + tile, 0, sem="relaxed", scope="gpu")


def shortcut_linear_triton(
    x: torch.Tensor,
    shortcut: torch.Tensor,
    h: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
) -> torch.Tensor:
    """y = x @ shortcut + h @ weight.T (+ bias) in one Triton kernel.

    Args:
        x: [..., k_in] residual stream; float16, bfloat16 or float32.
        shortcut: S, [k_in, k_out], x's dtype (any strides).
        h: [..., n] writer input, same leading dims as x; float16, bfloat16 or float32.
        weight: [k_out, n], h's dtype (nn.Linear layout, any strides).
        bias: [k_out] or None (any float dtype; added in fp32).
        float64 inputs (all of them) are computed by torch.

    Returns:
        [..., k_out] in x's dtype, rounded once from the fp32 accumulator.

    Equivalent to: ``slicekit.ops.shortcut_linear_ref``.
    """
    k_in, k_out = shortcut.shape
    n = weight.shape[1]
    if x.shape[-1] != k_in or h.shape[-1] != n or weight.shape[0] != k_out or x.shape[:-1] != h.shape[:-1]:
        raise ValueError(
            f"shortcut_linear_triton: shapes do not chain: x {tuple(x.shape)}, S {tuple(shortcut.shape)}, "
            f"h {tuple(h.shape)}, W {tuple(weight.shape)}"
        )
    if bias is not None and tuple(bias.shape) != (k_out,):
        raise ValueError(f"shortcut_linear_triton: bias must be [{k_out}], got {tuple(bias.shape)}")
    if x.dtype == torch.float64 and h.dtype == torch.float64:
        # Exact float64 is only reachable through DGEMM; float64 models are for invariance checks.
        y = torch.nn.functional.linear(h, weight.to(torch.float64), None if bias is None else bias.to(torch.float64))
        return y + x @ shortcut.to(torch.float64)
    if x.dtype not in _SUPPORTED or h.dtype not in _SUPPORTED:
        raise TypeError(
            f"shortcut_linear_triton: x {x.dtype} / h {h.dtype} must be float16, bfloat16 or float32 (or both float64)"
        )
    if shortcut.dtype != x.dtype or weight.dtype != h.dtype:
        raise TypeError(
            f"shortcut_linear_triton: S ({shortcut.dtype}) must match x ({x.dtype}) and W ({weight.dtype}) must "
            f"match h ({h.dtype}): tensor cores multiply equal dtypes"
        )
    lead = x.shape[:-1]
    x2 = x.reshape(-1, k_in)
    h2 = h.reshape(-1, n)
    M = x2.shape[0]
    y = torch.empty((M, k_out), dtype=x.dtype, device=x.device)
    if M == 0 or k_out == 0:
        return y.reshape(*lead, k_out)
    b = bias.contiguous() if bias is not None else y  # dummy pointer when HAS_BIAS is False

    # Split-K only for decode-sized steps (M <= 16), where a workspace of _MAX_SPLIT partial tiles
    # is a few hundred KB at most.
    counters = _tile_counters(y.device, triton.cdiv(M, 16) * triton.cdiv(k_out, 16)) if M <= 16 else None
    can_split = counters is not None and os.environ.get("SLICEKIT_SHORTCUT_SPLITK", "1") != "0"
    ws = torch.empty((_MAX_SPLIT, M, k_out), dtype=torch.float32, device=y.device) if can_split else y
    cnt = counters if can_split else y
    grid = lambda meta: (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(k_out, meta["BLOCK_N"]),  # noqa: E731
                         meta["SPLIT_K"])
    kernel = _shortcut_linear_kernel
    extra = {}
    if _force_config is not None:  # tests: bypass the autotuner
        kernel = _shortcut_linear_kernel.fn  # the Heuristics under the Autotuner: EVEN_KX/KH still derived
        extra = dict(_force_config.kwargs, num_warps=_force_config.num_warps, num_stages=_force_config.num_stages)
        if extra["SPLIT_K"] > 1 and not can_split:
            raise ValueError("split-K config forced where split-K is not available (M > 16)")
        grid = grid(extra)
    kernel[grid](
        x2, shortcut, h2, weight, b, y, ws, cnt,
        M, k_in, n, k_out, _m_bucket(M),
        x2.stride(0), x2.stride(1),
        shortcut.stride(0), shortcut.stride(1),
        h2.stride(0), h2.stride(1),
        weight.stride(0), weight.stride(1),
        y.stride(0), y.stride(1),
        HAS_BIAS=bias is not None, X_FP32=x.dtype == torch.float32, H_FP32=h.dtype == torch.float32,
        CAN_SPLIT=can_split, **extra,
    )
    return y.reshape(*lead, k_out)
