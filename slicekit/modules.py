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

from .ops.shortcut_linear import shortcut_linear, shortcut_linear_traceable


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


class TiedHead(nn.Module):
    """Output head that shares its weight with the (rotated, sliced) token embedding.

    logits = (h M^T) E^T + b + (h u) r^T, with
      E [V, k]: the embedding tensor itself (same Parameter object: stored and counted once);
      M [k, k]: ``mix``, the final norm's gamma in the sliced basis, Q_k^T diag(gamma) Q_k (a tied
        head cannot absorb gamma: the embedding must stay gamma-free);
      b [V], u [k], r [V]: only for LayerNorm models, where the embedding is centred (E M_c Q_k)
        but the head must still see the mean direction: b = E beta, u = Q_k^T gamma / d, r = E 1.
    Exact at full width: Q Q^T = I turns every term back into (gamma * x / rms + beta) E^T.
    """

    def __init__(self, weight: nn.Parameter, mix: torch.Tensor, bias: torch.Tensor | None = None,
                 mean_in: torch.Tensor | None = None, mean_out: torch.Tensor | None = None):
        super().__init__()
        self.weight = weight
        self.mix = nn.Parameter(mix, requires_grad=mix.is_floating_point())
        for name, t in (("bias", bias), ("mean_in", mean_in), ("mean_out", mean_out)):
            if t is None:
                self.register_parameter(name, None)
            else:
                setattr(self, name, nn.Parameter(t, requires_grad=t.is_floating_point()))
        if (mean_in is None) != (mean_out is None):
            raise ValueError("TiedHead needs both mean_in and mean_out, or neither")

    @property
    def in_features(self) -> int:
        return self.mix.shape[1]

    @property
    def out_features(self) -> int:
        return self.weight.shape[0]

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        logits = nn.functional.linear(nn.functional.linear(h, self.mix), self.weight, self.bias)
        if self.mean_in is not None:
            logits = logits + (h @ self.mean_in).unsqueeze(-1) * self.mean_out
        return logits

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, tied to the token embedding"


class PlainMLP(nn.Module):
    """fc2(act(fc1(x))) for architectures whose MLP linears sit directly on the layer (OPT)."""

    def __init__(self, fc1: nn.Module, act: nn.Module, fc2: nn.Module):
        super().__init__()
        self.fc1 = fc1
        self.act = act
        self.fc2 = fc2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def _default_shortcut_backend(x: torch.Tensor | None = None) -> str | None:
    # The fused Triton kernel is the default only where it was measured to win on the H200
    # (README, benchmarks/results/shortcut_linear.json): decode-sized steps (<= 16 tokens), where
    # one launch instead of two matters (1.16-1.24x faster than cuBLAS twice); from 128 tokens on,
    # cuBLAS with the add fused into its epilogue (addmm) is faster. SLICEKIT_SHORTCUT_BACKEND overrides.
    env = os.environ.get("SLICEKIT_SHORTCUT_BACKEND")
    if env:
        return env
    if x is not None and x.is_cuda and x.numel() // max(1, x.shape[-1]) <= 16 and _triton_available():
        return "triton"
    return "torch"


def _triton_available() -> bool:
    from .ops._dispatch import _triton_ok

    return _triton_ok()


class SlicedDecoderLayer(nn.Module):
    """One decoder layer of a sliced model.

    sequential:  m = x S_attn + Attn(norm(x)) W_o^T + b_o;   y = m S_mlp + MLP(norm(m)) W_d^T + b_d
    parallel:    y = x S + Attn(norm(x)) W_o^T + b_o + MLP(norm(x)) W_2^T + b_2
    (S_attn is None -- the identity -- when the layer's input and middle positions share a basis.)

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
        attn_shortcut: torch.Tensor | None,
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
        # A shortcut of None is the identity: both positions share one basis and one width, so the
        # skip connection needs no change of basis (and no parameters).
        for name, t in (("attn_shortcut", attn_shortcut), ("mlp_shortcut", mlp_shortcut)):
            if t is None:
                self.register_parameter(name, None)
            else:
                setattr(self, name, nn.Parameter(t, requires_grad=t.is_floating_point()))
        self.returns_tuple = returns_tuple
        self.shortcut_backend: str | None = None
        if attention_type is not None:
            self.attention_type = attention_type

    def _residual(self, x, shortcut, h, linear: nn.Linear):
        if shortcut is None:
            return x + nn.functional.linear(h, linear.weight, linear.bias)
        backend = self.shortcut_backend or _default_shortcut_backend(x)
        if torch.compiler.is_compiling():
            return shortcut_linear_traceable(x, shortcut, h, linear.weight, linear.bias, backend)
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
