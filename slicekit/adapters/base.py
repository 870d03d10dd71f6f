"""What an architecture looks like to SliceGPT: where the residual stream is read and written.

An adapter names, for one Hugging Face model family, the modules that WRITE into the residual
stream (embeddings, attention output, MLP output), the modules that READ the normalised stream
(q/k/v, MLP input, head), and the norms in between. The algorithm never touches a module by its
Hugging Face name; it asks the adapter.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn


class UnsupportedModelError(ValueError):
    """The model's architecture (or one of its options) is outside what slicekit can slice exactly."""


@dataclass(frozen=True)
class Adapter:
    """Static description of one architecture family.

    layout: "sequential" (attention then MLP, two residual positions per layer) or "parallel"
        (attention and MLP read the same normed input, one position per layer: Phi-2).
    norm: "rms" or "layernorm" (LayerNorm models get their residual writers centred).
    """

    name: str
    model_types: tuple[str, ...]
    layout: str
    norm: str
    base_path: str  # attribute path from the *ForCausalLM to the module holding the layers
    embed_names: tuple[str, ...]  # writers at position 0, relative to base (token [, position])
    final_norm_name: str
    attn_norm_name: str
    mlp_norm_name: str | None  # None for parallel blocks (they share attn_norm)
    attn_name: str
    attn_readers: tuple[str, ...]
    attn_writer: str
    mlp_name: str | None  # None when the MLP linears sit directly on the layer (OPT)
    mlp_readers: tuple[str, ...]
    mlp_writer: str
    mlp_kind: str  # "gated" (act(gate) * up) or "plain" (act(fc1))
    extra_checks: tuple = field(default_factory=tuple)

    # -- navigation -------------------------------------------------------------------------
    def base(self, model: nn.Module) -> nn.Module:
        mod = model
        for part in self.base_path.split("."):
            mod = getattr(mod, part)
        return mod

    def layers(self, model: nn.Module) -> nn.ModuleList:
        return self.base(model).layers

    def embeddings(self, model: nn.Module) -> list[nn.Embedding]:
        return [getattr(self.base(model), n) for n in self.embed_names]

    def final_norm(self, model: nn.Module) -> nn.Module:
        return getattr(self.base(model), self.final_norm_name)

    @staticmethod
    def lm_head(model: nn.Module) -> nn.Linear:
        return model.lm_head

    def num_positions(self, num_layers: int) -> int:
        """Residual positions, the final one (head input) included."""
        per_layer = 2 if self.layout == "sequential" else 1
        return per_layer * num_layers + 1

    def check(self, model: nn.Module) -> None:
        for fn in self.extra_checks:
            fn(model)


def norm_params(norm: nn.Module) -> tuple[torch.Tensor | None, torch.Tensor | None, float]:
    """(gamma, beta, eps) of a LayerNorm or any RMSNorm-like module."""
    gamma = getattr(norm, "weight", None)
    beta = getattr(norm, "bias", None)
    eps = None
    for attr in ("eps", "variance_epsilon", "epsilon"):
        if hasattr(norm, attr):
            eps = getattr(norm, attr)
            break
    if eps is None:
        raise UnsupportedModelError(f"cannot find the epsilon of norm module {type(norm).__name__}")
    return gamma, beta, float(eps)
