"""Fused residual update of a sliced model: y = x S + h W^T (+ b).

After slicing, every residual connection carries a k_p x k_{p+1} change of basis S. Done naively
that is two GEMMs and an add, three launches and an extra round trip of y through memory per
residual connection -- the overhead that makes naive sliced models decode slower than dense ones.
"""
from __future__ import annotations

import torch

from ._dispatch import Op


def shortcut_linear_ref(x, shortcut, h, weight, bias):
    """Two GEMMs and an add in the input dtype (what an unfused sliced layer does)."""
    y = torch.nn.functional.linear(h, weight, bias)
    return torch.addmm(y.reshape(-1, y.shape[-1]), x.reshape(-1, x.shape[-1]), shortcut).reshape(y.shape)


def _triton_impl(x, shortcut, h, weight, bias):
    from slicekit.kernels.shortcut_linear import shortcut_linear_triton

    return shortcut_linear_triton(x, shortcut, h, weight, bias)


def _cuda_impl(x, shortcut, h, weight, bias):
    return torch.ops.slicekit.shortcut_linear(x, shortcut, h, weight, bias)


_OP = Op("shortcut_linear", {"torch": shortcut_linear_ref, "triton": _triton_impl, "cuda": _cuda_impl})


# Dynamo cannot trace a Triton launcher that autotunes and reads triton's own C settings (it fails
# with "Can't construct an AttrSource ..." or a graph break on triton._C), so inside torch.compile
# the kernel goes in as an opaque custom op with a shape-only fake; eager calls skip the custom-op
# dispatch, which would add microseconds to every decode step.
@torch.library.custom_op("slicekit::shortcut_linear_triton", mutates_args=())
def _triton_custom_op(
    x: torch.Tensor, shortcut: torch.Tensor, h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    return _triton_impl(x, shortcut, h, weight, bias)


@_triton_custom_op.register_fake
def _(x, shortcut, h, weight, bias):
    return x.new_empty((*x.shape[:-1], shortcut.shape[1]))


def shortcut_linear_traceable(x, shortcut, h, weight, bias, backend: str) -> torch.Tensor:
    """``shortcut_linear`` for use inside torch.compile: no dispatcher logic to trace.

    ``backend`` must already be resolved ("cuda", "triton" or "torch"); "torch" leaves the two
    GEMMs and the add to the compiler, which fuses the add itself.
    """
    if backend == "triton":
        return torch.ops.slicekit.shortcut_linear_triton(x, shortcut, h, weight, bias)
    if backend == "cuda":
        return torch.ops.slicekit.shortcut_linear(x, shortcut, h, weight, bias)
    return shortcut_linear_ref(x, shortcut, h, weight, bias)


def shortcut_linear(
    x: torch.Tensor,
    shortcut: torch.Tensor,
    h: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    backend: str | None = None,
) -> torch.Tensor:
    """Residual update with a change of basis, as one op.

    Args:
        x: residual stream, [..., k_in].
        shortcut: S, [k_in, k_out], same dtype as x.
        h: the writer's input (attention heads or MLP intermediate), [..., n], same leading dims.
        weight: the writer's weight, [k_out, n] (nn.Linear layout).
        bias: optional [k_out].
        backend: "cuda", "triton", "torch" or None.

    Returns:
        [..., k_out] = x @ S + h @ weight.T (+ bias), in x's dtype.

    Equivalent to: ``shortcut_linear_ref``.
    """
    if x.shape[:-1] != h.shape[:-1]:
        raise ValueError(f"shortcut_linear: x {tuple(x.shape)} and h {tuple(h.shape)} differ in leading dims")
    if shortcut.shape != (x.shape[-1], weight.shape[0]) or weight.shape[1] != h.shape[-1]:
        raise ValueError(
            f"shortcut_linear: shapes do not chain: x {tuple(x.shape)}, S {tuple(shortcut.shape)}, "
            f"h {tuple(h.shape)}, W {tuple(weight.shape)}"
        )
    return _OP(x, shortcut, h, weight, bias, backend=backend, device=x.device)
