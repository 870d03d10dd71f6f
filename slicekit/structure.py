"""The shape of a sliced model, built identically when slicing and when loading.

``sliced_skeleton`` turns a model (real, when slicing; on the meta device, when loading) into a
new model object of the same class whose residual width is ``dims[p]`` at every position. Every
tensor that slicing recomputes is left on the meta device to be filled in; everything else (rotary
buffers, per-head norms, biases the algorithm does not touch) is copied. The original model is
never modified.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from .adapters import Adapter, norm_params
from .modules import PlainMLP, SlicedDecoderLayer, SlicedRMSNorm, TiedHead, layer_returns_tuple


def _meta_linear(in_features: int, out_features: int, bias: bool, dtype: torch.dtype) -> nn.Linear:
    return nn.Linear(in_features, out_features, bias=bias, device="meta", dtype=dtype)


def reader_has_bias(adapter: Adapter, linear: nn.Linear, norm: nn.Module) -> bool:
    """A reader needs a bias when it had one or when LayerNorm's beta must be folded into it."""
    if linear.bias is not None:
        return True
    if adapter.norm == "layernorm":
        _, beta, _ = norm_params(norm)
        return beta is not None
    return False


def _copy_without(module: nn.Module, drop: list[nn.Module]) -> nn.Module:
    """Deep copy of ``module`` where the listed submodules become Identity (their weights are not copied)."""
    memo = {id(m): nn.Identity() for m in drop}
    return copy.deepcopy(module, memo)


def layer_parts(adapter: Adapter, layer: nn.Module):
    """(attn, attn_norm, mlp_container, mlp_norm) of an original Hugging Face layer."""
    attn = getattr(layer, adapter.attn_name)
    mlp = getattr(layer, adapter.mlp_name) if adapter.mlp_name else layer
    attn_norm = getattr(layer, adapter.attn_norm_name)
    mlp_norm = getattr(layer, adapter.mlp_norm_name) if adapter.mlp_norm_name else attn_norm
    return attn, attn_norm, mlp, mlp_norm


def shared_connection(c: int, n_pos: int, share: int) -> bool:
    """Whether residual connection c (position c -> c + 1) stays inside one shared basis.

    With ``share`` = g > 1, positions [0, g), [g, 2g), ... (the last position, the head's input,
    excluded) share one basis and one width, so the connections inside a run are the identity.
    """
    nxt = c + 1
    return share > 1 and nxt < n_pos - 1 and nxt % share != 0


def sliced_layer_skeleton(
    adapter: Adapter, layer: nn.Module, d: int, k_in: int, k_mid: int, k_out: int, intermediate: int | None = None,
    identity: tuple[bool, bool] = (False, False),
) -> SlicedDecoderLayer:
    """A SlicedDecoderLayer shaped for widths (k_in, k_mid, k_out); recomputed tensors on meta.

    For parallel layouts k_mid is unused (both blocks read k_in and write k_out). ``intermediate``
    is the number of MLP neurons kept (None: all of them). ``identity``: (attention, MLP) skip
    connections that stay in one shared basis, so they need no shortcut matrix.
    """
    attn, attn_norm, mlp, mlp_norm = layer_parts(adapter, layer)
    parallel = adapter.layout == "parallel"
    k_mlp_in = k_in if parallel else k_mid
    k_attn_out = k_out if parallel else k_mid

    readers = [getattr(attn, n) for n in adapter.attn_readers]
    writer = getattr(attn, adapter.attn_writer)
    new_attn = _copy_without(attn, readers + [writer])
    for name, old in zip(adapter.attn_readers, readers):
        setattr(new_attn, name, _meta_linear(k_in, old.out_features, reader_has_bias(adapter, old, attn_norm), old.weight.dtype))
    attn_out = _meta_linear(writer.in_features, k_attn_out, writer.bias is not None, writer.weight.dtype)

    m_readers = [getattr(mlp, n) for n in adapter.mlp_readers]
    m_writer = getattr(mlp, adapter.mlp_writer)
    n_inter = m_writer.in_features if intermediate is None else int(intermediate)
    if not 1 <= n_inter <= m_writer.in_features:
        raise ValueError(f"intermediate size {n_inter} outside [1, {m_writer.in_features}]")
    if adapter.mlp_name:
        new_mlp = _copy_without(mlp, m_readers + [m_writer])
        for name, old in zip(adapter.mlp_readers, m_readers):
            setattr(new_mlp, name, _meta_linear(k_mlp_in, n_inter, reader_has_bias(adapter, old, mlp_norm), old.weight.dtype))
        if hasattr(new_mlp, "intermediate_size"):
            new_mlp.intermediate_size = n_inter
    else:  # OPT: fc1 / activation / fc2 live on the layer itself
        (fc1,) = m_readers
        new_fc1 = _meta_linear(k_mlp_in, n_inter, reader_has_bias(adapter, fc1, mlp_norm), fc1.weight.dtype)
        new_mlp = PlainMLP(new_fc1, copy.deepcopy(layer.activation_fn), nn.Identity())
    mlp_out = _meta_linear(n_inter, k_out, m_writer.bias is not None, m_writer.weight.dtype)

    dtype = writer.weight.dtype
    _, _, eps_a = norm_params(attn_norm)
    _, _, eps_m = norm_params(mlp_norm)
    return SlicedDecoderLayer(
        layout=adapter.layout,
        attn=new_attn,
        mlp=new_mlp,
        attn_norm=SlicedRMSNorm(d, eps_a),
        mlp_norm=None if parallel else SlicedRMSNorm(d, eps_m),
        attn_out=attn_out,
        mlp_out=mlp_out,
        attn_shortcut=None if identity[0] else torch.empty(k_in, k_attn_out, device="meta", dtype=dtype),
        mlp_shortcut=None if parallel or identity[1] else torch.empty(k_mid, k_out, device="meta", dtype=dtype),
        returns_tuple=layer_returns_tuple(layer),
        attention_type=getattr(layer, "attention_type", None),
    )


def layer_dims(adapter: Adapter, dims: list[int], i: int) -> tuple[int, int, int]:
    if adapter.layout == "sequential":
        return dims[2 * i], dims[2 * i + 1], dims[2 * i + 2]
    return dims[i], dims[i + 1], dims[i + 1]


def sliced_skeleton(model: nn.Module, adapter: Adapter, dims: list[int], slicing_meta: dict) -> nn.Module:
    """A new model of ``model``'s class with the sliced structure (see module docstring).

    ``slicing_meta`` may hold ``tied`` (embedding and head share one tensor: dims[0] == dims[-1],
    head = :class:`TiedHead`), ``intermediate_sizes`` (MLP neurons kept per layer) and
    ``share_basis`` (runs of that many consecutive positions share one basis: identity shortcuts).
    """
    cfg = copy.deepcopy(model.config)
    d = cfg.hidden_size
    tied = bool(slicing_meta.get("tied", False))
    inter = slicing_meta.get("intermediate_sizes")
    layers = adapter.layers(model)
    if tied and dims[0] != dims[-1]:
        raise ValueError(
            f"tied embeddings need the same width at the first and last position, got {dims[0]} and {dims[-1]}"
        )
    if inter is not None and len(inter) != len(layers):
        raise ValueError(f"intermediate_sizes must list {len(layers)} sizes, got {len(inter)}")
    share = int(slicing_meta.get("share_basis", 1))
    n_pos = len(dims)
    bad = [c for c in range(n_pos - 1) if shared_connection(c, n_pos, share) and dims[c] != dims[c + 1]]
    if bad:
        raise ValueError(f"share_basis={share}: positions {bad[0]} and {bad[0] + 1} share a basis but have widths "
                         f"{dims[bad[0]]} and {dims[bad[0] + 1]}")

    def identity(i):
        if adapter.layout == "sequential":
            return shared_connection(2 * i, n_pos, share), shared_connection(2 * i + 1, n_pos, share)
        return shared_connection(i, n_pos, share), False
    # Untied, the head gets its own basis (Q_L) while the embedding gets Q_0: two tensors. Tied, both
    # positions share one basis and the head reads the embedding tensor itself.
    cfg.tie_word_embeddings = tied
    cfg.slicekit = dict(slicing_meta, dims=list(dims), hidden_size=d, layout=adapter.layout, adapter=adapter.name)
    dtype = next(model.parameters()).dtype
    with torch.device("meta"):
        new = type(model)(cfg)
    new.to(dtype)
    if getattr(model, "generation_config", None) is not None:
        new.generation_config = copy.deepcopy(model.generation_config)

    base_new = adapter.base(new)
    base_new.layers = nn.ModuleList(
        sliced_layer_skeleton(adapter, layer, d, *layer_dims(adapter, dims, i), None if inter is None else inter[i],
                              identity=identity(i))
        for i, layer in enumerate(layers)
    )
    for name, emb in zip(adapter.embed_names, adapter.embeddings(new)):
        emb.weight = nn.Parameter(torch.empty(emb.num_embeddings, dims[0], device="meta", dtype=dtype))
        emb.embedding_dim = dims[0]
    final_norm = adapter.final_norm(model)
    _, _, eps = norm_params(final_norm)
    setattr(base_new, adapter.final_norm_name, SlicedRMSNorm(d, eps))
    head = adapter.lm_head(model)
    has_bias = reader_has_bias(adapter, head, final_norm)
    if tied:
        k, vocab = dims[-1], head.out_features
        centred = adapter.norm == "layernorm"

        def empty(*shape):
            return torch.empty(*shape, device="meta", dtype=dtype)

        new.lm_head = TiedHead(
            adapter.embeddings(new)[0].weight, empty(k, k), bias=empty(vocab) if has_bias else None,
            mean_in=empty(k) if centred else None, mean_out=empty(vocab) if centred else None,
        )
    else:
        new.lm_head = _meta_linear(dims[-1], head.out_features, has_bias, dtype)
    return new


def tie_head(model: nn.Module, adapter: Adapter) -> None:
    """Point a TiedHead at the embedding's current Parameter (after the embedding was replaced)."""
    if isinstance(model.lm_head, TiedHead):
        model.lm_head.weight = adapter.embeddings(model)[0].weight


def meta_tensor_names(model: nn.Module) -> list[str]:
    names = [n for n, p in model.named_parameters(remove_duplicate=False) if p.is_meta]
    names += [n for n, b in model.named_buffers(remove_duplicate=False) if b.is_meta]
    return names


def all_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every buffer, persistent or not (rotary tables are non-persistent but part of the model)."""
    return dict(model.named_buffers(remove_duplicate=False))


def set_tensor(model: nn.Module, name: str, value: torch.Tensor) -> None:
    """Replace parameter or buffer ``name`` (dotted) with ``value``."""
    mod_name, _, attr = name.rpartition(".")
    mod = model.get_submodule(mod_name) if mod_name else model
    if attr in mod._parameters:
        mod._parameters[attr] = nn.Parameter(value, requires_grad=value.is_floating_point())
    elif attr in mod._buffers:
        mod._buffers[attr] = value
    else:
        raise KeyError(f"{name} is neither a parameter nor a buffer")
