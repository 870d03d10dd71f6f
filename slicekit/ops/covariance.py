"""Streaming second moment C += X^T diag(m) X of calibration activations.

This is where calibration spends its arithmetic: one call per batch and residual position.
The backends differ only in how they multiply; all of them keep the running sum in float64,
because the paper's own ablation shows fp32 PCA ruins large models (DESIGN.md section 2).
"""
from __future__ import annotations

import torch

from ._dispatch import Op, _cuda_extension

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def covariance_ref(x: torch.Tensor, mask: torch.Tensor | None, out: torch.Tensor, symmetric: bool = True) -> torch.Tensor:
    """Float64 reference: upcast, zero the masked rows, one GEMM, add into ``out``.

    x: [N, d] (row-major rows, any dtype); mask: [N] uint8 or None; out: [d, d] float64.
    ``symmetric`` is accepted for the common signature; both triangles are always updated.
    """
    x64 = x.to(torch.float64)
    if mask is not None:
        x64 = x64 * mask.to(torch.float64).unsqueeze(1)
    prod = x64.T @ x64
    # The GEMM of X^T with X is symmetric only up to the order of its sums; make it exact.
    out += 0.5 * (prod + prod.T)
    return out


def _triton_impl(x, mask, out, symmetric=True):
    from slicekit.kernels.covariance import covariance_triton

    return covariance_triton(x, mask, out, symmetric=symmetric)


def _cuda_impl(x, mask, out, symmetric=True):
    torch.ops.slicekit.covariance_accumulate(x, mask, out, symmetric)
    return out


def symmetrize_(out: torch.Tensor) -> torch.Tensor:
    """Copy the upper triangle of ``out`` onto its lower one, in place; return ``out``.

    The finishing step after a stream of ``covariance(..., symmetric=False)`` calls.
    """
    if out.dim() != 2 or out.shape[0] != out.shape[1]:
        raise ValueError(f"symmetrize_: expected a square matrix, got shape {tuple(out.shape)}")
    out.copy_(torch.triu(out) + torch.triu(out, 1).T)
    return out


def _prefer_wgmma(x, mask, out, symmetric=True):
    """The extension's Hopper wgmma kernel for unmasked fp16/bf16 rows on an sm_90 GPU (it says so
    through covariance_path): there it took less time than the Triton kernel at every width and row
    count measured, d = 576-8192 (README; benchmarks/results/covariance.json, covariance_small_d.json,
    and against Triton's split-K at small widths covariance_triton_splits_7842328.json: 0.042 ms at
    d = 576 where the extension takes 0.032). With a mask Triton gathers the kept rows where the
    extension copies X with zeroed rows, so the AUTO_ORDER decides."""
    if mask is not None or x.device.type != "cuda":
        return None
    path = getattr(torch.ops.slicekit, "covariance_path", None) if _cuda_extension() is not None else None
    # covariance_path checks the dtype and runs on x's device itself.
    return "cuda" if path is not None and path(x) == "sm90_wgmma" else None


_OP = Op("covariance_accumulate", {"torch": covariance_ref, "triton": _triton_impl, "cuda": _cuda_impl},
         prefer=_prefer_wgmma)


def covariance(
    x: torch.Tensor,
    mask: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    *,
    backend: str | None = None,
    symmetric: bool = True,
) -> torch.Tensor:
    """Add X^T diag(mask) X into a float64 accumulator and return it.

    Args:
        x: activations, [N, d] or [B, T, d]; float16, bfloat16, float32 or float64.
        mask: optional 0/1 row mask, [N] or [B, T] (bool, integer or float holding only 0 and 1).
            Rows with mask 0 (padding) contribute nothing.
        out: optional float64 [d, d] accumulator on x's device; a zero one is made when None.
        backend: "cuda", "triton", "torch" or None (see ``slicekit.ops.available_backends``).
        symmetric: False lets a backend update only the upper triangle (diagonal included) and
            leave the lower one stale -- for streams of calls, finished by one ``symmetrize_``
            (the Triton kernel saves the float64 read-modify-write of the mirror, ~8% per call).

    Returns:
        ``out`` (float64 [d, d], exactly symmetric when ``symmetric``), updated in place.

    Equivalent to: ``covariance_ref`` (float64 upcast and one GEMM).
    """
    if not isinstance(x, torch.Tensor) or x.dim() not in (2, 3):
        raise ValueError(f"covariance: x must be a 2-D [N, d] or 3-D [B, T, d] tensor, got {_describe(x)}")
    if x.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"covariance: x has dtype {x.dtype}; expected one of {_FLOAT_DTYPES}")
    d = x.shape[-1]
    lead = x.shape[:-1]
    x2 = x.reshape(-1, d)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()  # kernels stream rows; a strided last dim would defeat vector loads
    m = None
    if mask is not None:
        if tuple(mask.shape) != tuple(lead):
            raise ValueError(f"covariance: mask shape {tuple(mask.shape)} does not match x's leading dims {tuple(lead)}")
        if mask.device != x.device:
            raise ValueError(f"covariance: mask is on {mask.device} but x is on {x.device}")
        if mask.dtype != torch.bool:
            if bool(((mask != 0) & (mask != 1)).any()):
                raise ValueError("covariance: mask must hold only 0 and 1 (it selects rows; it does not weight them)")
        m = mask.reshape(-1).to(torch.uint8).contiguous()
    if out is None:
        out = torch.zeros(d, d, dtype=torch.float64, device=x.device)
    elif out.dtype != torch.float64 or tuple(out.shape) != (d, d) or out.device != x.device:
        raise ValueError(
            f"covariance: out must be a float64 [{d}, {d}] tensor on {x.device}, got {_describe(out)}"
        )
    if x2.shape[0] == 0:
        return out
    return _OP(x2, m, out, symmetric=bool(symmetric), backend=backend, device=x.device)


def _describe(t) -> str:
    if isinstance(t, torch.Tensor):
        return f"{t.dtype} tensor of shape {tuple(t.shape)} on {t.device}"
    return type(t).__name__
