"""Rotate-and-slice of one weight: readers W <- (W Q)[:, :k], writers W <- (Q^T W)[:k, :].

Only the k kept columns (rows) are computed: the reference implementation forms the whole d x d
product in float64 and throws a quarter of it away. Every backend must round the result ONCE to
the model dtype; rounding Q itself to half precision adds error the exact product would not have.
"""
from __future__ import annotations

import torch

from ._dispatch import Op


def rotate_slice_ref(weight: torch.Tensor, q: torch.Tensor, k: int, dim: int, out_dtype: torch.dtype) -> torch.Tensor:
    """Float64 reference on the kept columns of Q, rounded once to ``out_dtype``."""
    q64 = q[:, :k].to(torch.float64)
    w64 = weight.to(torch.float64)
    res = w64 @ q64 if dim == 1 else q64.T @ w64
    return res.to(out_dtype)


def _torch_impl(weight, q, k, dim, out_dtype, flush=None):
    return rotate_slice_ref(weight, q, k, dim, out_dtype)


def _triton_impl(weight, q, k, dim, out_dtype, flush=None):
    from slicekit.kernels.rotate_slice import rotate_slice_triton

    return rotate_slice_triton(weight, q, k, dim, out_dtype, flush=flush)


def _cuda_impl(weight, q, k, dim, out_dtype, flush=None):
    return torch.ops.slicekit.rotate_slice(weight, q, k, dim, out_dtype)  # always two accumulators


_OP = Op("rotate_slice", {"torch": _torch_impl, "triton": _triton_impl, "cuda": _cuda_impl})


def rotate_slice(
    weight: torch.Tensor,
    q: torch.Tensor,
    k: int,
    *,
    dim: int,
    out_dtype: torch.dtype | None = None,
    backend: str | None = None,
    flush: bool | None = None,
) -> torch.Tensor:
    """Rotate one weight into a residual basis and keep its first ``k`` coordinates.

    Args:
        weight: 2-D weight; with ``dim=1`` it is [m, d] (a reader: nn.Linear weight or an
            embedding table, whose columns live in the residual stream); with ``dim=0`` it is
            [d, n] (a writer: nn.Linear weight whose rows live in the residual stream).
            float16, bfloat16, float32 or float64.
        q: [d, >=k] orthogonal basis, columns sorted by importance; float32 or float64.
        k: kept width, 1 <= k <= d.
        dim: which dimension of ``weight`` is the residual one (1: readers, 0: writers).
        out_dtype: result dtype (default: weight's).
        backend: "cuda", "triton", "torch" or None.
        flush: how the Triton kernel accumulates (see kernels/rotate_slice.py): True rounds each
            K step's tile into the running sum (no drift; the default through
            SLICEKIT_ROTATE_FLUSH), False keeps hi and lo products in two accumulators (~20% faster,
            a drift of a few % of the half-ulp at d = 8192 -- what the CUDA extension always does).
            The float64 reference ignores it.

    Returns:
        [m, k] (dim=1) or [k, n] (dim=0) in ``out_dtype``.

    Equivalent to: ``rotate_slice_ref`` -- ``(weight @ q)[:, :k]`` or ``(q.T @ weight)[:k]`` in
    float64, rounded once.
    """
    if dim not in (0, 1):
        raise ValueError(f"rotate_slice: dim must be 0 (writers) or 1 (readers), got {dim}")
    if weight.dim() != 2 or q.dim() != 2:
        raise ValueError(f"rotate_slice: weight and q must be 2-D, got {tuple(weight.shape)} and {tuple(q.shape)}")
    d = weight.shape[dim]
    if q.shape[0] != d:
        raise ValueError(f"rotate_slice: q has {q.shape[0]} rows but the weight's residual dim is {d}")
    if not 1 <= k <= q.shape[1]:
        raise ValueError(f"rotate_slice: k={k} outside [1, {q.shape[1]}]")
    if q.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"rotate_slice: q must be float32 or float64 (half precision Q loses the basis), got {q.dtype}")
    if q.device != weight.device:
        raise ValueError(f"rotate_slice: q is on {q.device} but weight is on {weight.device}")
    out_dtype = out_dtype or weight.dtype
    return _OP(weight, q, int(k), dim, out_dtype, backend=backend, device=weight.device, flush=flush)
