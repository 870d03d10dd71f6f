"""Modules of a sliced model: the parameter-free norm and the decoder layer with shortcut matrices.

A sliced layer keeps the Hugging Face attention and MLP modules (rotary, GQA, caches and attention
kernels stay theirs) but takes their output projections out: the residual update
``x_next = x S + h W^T + b`` is done by one op, ``slicekit.ops.shortcut_linear``, so a fused kernel
can replace the two GEMMs and the add.
"""
from __future__ import annotations

import inspect
import os

import torch
from torch import nn

from .ops.shortcut_linear import shortcut_linear


class SlicedRMSNorm(nn.Module):
    """x / sqrt(sum(x^2) / dim + eps) with NO learned scale; ``dim`` is the ORIGINAL width.

    After slicing the stream holds k < d coordinates, but the norm must still divide by d: the
    dropped coordinates carried (almost) no energy, so sum(x^2) is unchanged while mean(x^2) over
    k would rescale every layer's input by sqrt(d / k).
    """

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.dim = int(dim)
        self.eps = float(eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Compute in at least fp32 (fp16 sums of squares overflow) but never below the input's precision.
        xf = x.to(torch.promote_types(x.dtype, torch.float32))
        var = xf.pow(2).sum(dim=-1, keepdim=True) / self.dim
        return (xf * torch.rsqrt(var + self.eps)).to(x.dtype)

    def extra_repr(self) -> str:
        return f"divisor={self.dim}, eps={self.eps}"


class PlainMLP(nn.Module):
    """fc2(act(fc1(x))) for architectures whose MLP linears sit directly on the layer (OPT)."""

    def __init__(self, fc1: nn.Module, act: nn.Module, fc2: nn.Module):
        super().__init__()
        self.fc1 = fc1
        self.act = act
        self.fc2 = fc2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def _default_shortcut_backend() -> str | None:
    # The fused kernel becomes the default only where it was measured to win (README, issue 6);
    # SLICEKIT_SHORTCUT_BACKEND overrides for experiments.
    return os.environ.get("SLICEKIT_SHORTCUT_BACKEND") or "torch"


class SlicedDecoderLayer(nn.Module):
    """One decoder layer of a sliced model.

    sequential:  m = x S_attn + Attn(norm(x)) W_o^T + b_o;   y = m S_mlp + MLP(norm(m)) W_d^T + b_d
    parallel:    y = x S + Attn(norm(x)) W_o^T + b_o + MLP(norm(x)) W_2^T + b_2

    ``attn`` and ``mlp`` are the original Hugging Face modules with their readers rotated and sliced
    and their output projection replaced by Identity; the output projections live here as
    ``attn_out`` / ``mlp_out`` so the residual update can be one fused op.
    """

    def __init__(
        self,
        layout: str,
        attn: nn.Module,
        mlp: nn.Module,
        attn_norm: nn.Module,
        mlp_norm: nn.Module | None,
        attn_out: nn.Linear,
        mlp_out: nn.Linear,
        attn_shortcut: torch.Tensor,
        mlp_shortcut: torch.Tensor | None,
        returns_tuple: bool = False,
        attention_type: str | None = None,
    ):
        super().__init__()
        if layout not in ("sequential", "parallel"):
            raise ValueError(f"unknown layout {layout!r}")
        self.layout = layout
        self.self_attn = attn
        self.mlp = mlp
        self.attn_norm = attn_norm
        self.mlp_norm = mlp_norm
        self.attn_out = attn_out
        self.mlp_out = mlp_out
        self.attn_shortcut = nn.Parameter(attn_shortcut, requires_grad=attn_shortcut.is_floating_point())
        if mlp_shortcut is not None:
            self.mlp_shortcut = nn.Parameter(mlp_shortcut, requires_grad=mlp_shortcut.is_floating_point())
        else:
            self.register_parameter("mlp_shortcut", None)
        self.returns_tuple = returns_tuple
        self.shortcut_backend: str | None = None
        if attention_type is not None:
            self.attention_type = attention_type

    def _residual(self, x, shortcut, h, linear: nn.Linear):
        backend = self.shortcut_backend or _default_shortcut_backend()
        return shortcut_linear(x, shortcut, h, linear.weight, linear.bias, backend=backend)

    def attention(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        """Heads output (before the output projection) for the normed input."""
        out = self.self_attn(hidden_states=self.attn_norm(x), **kwargs)
        return out[0] if isinstance(out, tuple) else out

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        if args:
            # Hugging Face calls decoder layers with keyword arguments only; a positional one would
            # be silently mis-bound to the attention call below.
            raise TypeError("SlicedDecoderLayer takes hidden_states positionally and everything else by keyword")
        x = hidden_states
        if self.layout == "sequential":
            heads = self.attention(x, **kwargs)
            x = self._residual(x, self.attn_shortcut, heads, self.attn_out)
            inter = self.mlp(self.mlp_norm(x))
            x = self._residual(x, self.mlp_shortcut, inter, self.mlp_out)
        else:
            normed = self.attn_norm(x)
            out = self.self_attn(hidden_states=normed, **kwargs)
            heads = out[0] if isinstance(out, tuple) else out
            inter = self.mlp(normed)
            y = self._residual(x, self.attn_shortcut, heads, self.attn_out)
            x = y + nn.functional.linear(inter, self.mlp_out.weight, self.mlp_out.bias)
        return (x,) if self.returns_tuple else x


def layer_returns_tuple(layer: nn.Module) -> bool:
    """Whether this transformers release's decoder layers return a tuple (older) or a tensor (5.x)."""
    ann = inspect.signature(type(layer).forward).return_annotation
    text = ann if isinstance(ann, str) else getattr(ann, "__name__", str(ann))
    return "Tensor" not in str(text) or "tuple" in str(text).lower()
