"""Width budget: choose every residual width (and MLP width) to meet a total parameter count.

Three pieces:

* ``collect_statistics``: one forward of the DENSE model over the calibration data with hooks,
  accumulating (float64) the second moment of the residual stream at every position and,
  optionally, the Gram matrix of every MLP's intermediate activations. These are the per-position
  spectra the allocation needs before any slicing is done, and the proxy for the last position's
  second moment when the embedding and head share one basis.
* ``ParamModel``: the exact parameter count of a sliced model as a function of its widths
  (embeddings, head, every linear, shortcut matrices, the tied head's mixing matrix), so the
  allocation can search without building models. ``slice_model``'s report counts the real model;
  tests check that the two agree on every architecture.
* ``allocate``: greedy marginal allocation. Starting from full width, repeatedly narrow the group
  (a residual position, the tied first/last pair, or one layer's MLP) whose next step of
  ``round_to`` costs the least error per parameter saved, until the count meets the target. The
  error of a step is, for ``budget="evr"``, the discarded eigenvalue mass of that position
  relative to its trace (for an MLP: the refit error of the removed neurons relative to the
  trace of the position it writes); for ``budget="sensitivity"``, that mass multiplied by the
  position's measured loss sensitivity (``measure_sensitivity``: the held-out loss increase when
  that position alone is narrowed in the dense model, divided by the discarded mass there).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from .adapters import Adapter, norm_params
from .calibration import Batch, capture_first_layer_inputs
from .ops import covariance
from .pca import pca_basis
from .structure import layer_parts, reader_has_bias

BUDGETS = ("uniform", "evr", "sensitivity", "mlp")  # "mlp": residual kept whole, see slicing._plan

__all__ = ["Statistics", "collect_statistics", "ParamModel", "Group", "allocate", "measure_sensitivity", "BUDGETS",
           "position_hooks", "position_groups"]


@dataclass
class Statistics:
    """Dense-model calibration statistics (all float64, on the CPU).

    covariances: one [d, d] second moment per residual position (embedding output first, head
        input last), padding excluded, the stream centred for LayerNorm models.
    mlp_grams: one [m, m] Gram matrix of intermediate activations per layer, or None.
    """

    covariances: list[torch.Tensor]
    mlp_grams: list[torch.Tensor] | None
    n_tokens: int
    normalize_tokens: bool = False
    sensitivity: dict | None = None  # measured sensitivities, keyed by the options they were measured for
    _bases: dict = field(default_factory=dict, repr=False)

    def basis(self, positions: tuple[int, ...], damp: float = 0.01) -> torch.Tensor:
        """Eigenbasis of the trace-normalised sum of the positions' second moments (cached)."""
        key = (tuple(positions), damp)
        if key not in self._bases:
            self._bases[key] = pca_basis(combined_moment([self.covariances[p] for p in positions]), damp)[0]
        return self._bases[key]

    def energies(self, position: int, q: torch.Tensor) -> torch.Tensor:
        """Share of position's second moment along each column of q (sums to 1 for a full basis)."""
        c = self.covariances[position]
        e = ((c @ q) * q).sum(0).clamp_min(0)
        return e / c.diagonal().sum().clamp_min(1e-300)


def combined_moment(covs: list[torch.Tensor]) -> torch.Tensor:
    """sum_p C_p / tr(C_p): every position weighs the same whatever its scale."""
    out = torch.zeros_like(covs[0])
    for c in covs:
        out += c / c.diagonal().sum().clamp_min(1e-300)
    return out


def position_hooks(model: nn.Module, adapter: Adapter):
    """(module, position, kind) for every residual position of the ORIGINAL model.

    kind "layer": the position is the input of this decoder layer (a forward pre-hook sees it);
    kind "mid": the position is the input of this (post-attention) norm; kind "final": the input of
    the final norm.
    """
    layers = adapter.layers(model)
    out = []
    for i, layer in enumerate(layers):
        if adapter.layout == "sequential":
            _, _, _, mlp_norm = layer_parts(adapter, layer)
            out.append((layer, 2 * i, "layer"))
            out.append((mlp_norm, 2 * i + 1, "mid"))
        else:
            out.append((layer, i, "layer"))
    out.append((adapter.final_norm(model), adapter.num_positions(len(layers)) - 1, "final"))
    return out


class _Stop(Exception):
    pass


def _hidden_arg(args, kwargs):
    return args[0] if args else kwargs["hidden_states"]


@torch.no_grad()
def collect_statistics(model: nn.Module, adapter: Adapter, batches: list[Batch], *, mlp: bool = False,
                       backend: str | None = None, normalize_tokens: bool = False) -> Statistics:
    """Second moments of the dense model's residual stream at every position (see module docstring).

    Args:
        model: the original (unsliced) model; not modified (hooks are removed on exit).
        batches: calibration batches (``slicekit.calibration.make_batches``).
        mlp: also accumulate each MLP's intermediate Gram matrix (m x m per layer).
        normalize_tokens: scale every token of the stream to unit RMS before accumulating (as
            ``slice_model(normalize_tokens=True)`` does).
    """
    from .slicing import unit_rms

    device = next(model.parameters()).device
    d = model.config.hidden_size
    n_pos = adapter.num_positions(len(adapter.layers(model)))
    covs = [torch.zeros(d, d, dtype=torch.float64, device=device) for _ in range(n_pos)]
    grams: list[torch.Tensor | None] = [None] * len(adapter.layers(model))
    centre = adapter.norm == "layernorm"
    state: dict = {}

    def add(pos, x):
        x = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        if centre:
            x = x - x.mean(-1, keepdim=True)
        if normalize_tokens:
            x = unit_rms(x)
        covariance(x, state["mask"], covs[pos], backend=backend)

    handles = []
    try:
        for module, pos, kind in position_hooks(model, adapter):
            def hook(mod, args, kwargs, pos=pos, kind=kind):
                add(pos, _hidden_arg(args, kwargs))
                if kind == "final":
                    raise _Stop  # the head's logits are not needed

            handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))
        if mlp:
            for i, layer in enumerate(adapter.layers(model)):
                _, _, mlp_mod, _ = layer_parts(adapter, layer)
                writer = getattr(mlp_mod, adapter.mlp_writer)

                def ghook(mod, args, i=i):
                    h = args[0]
                    if grams[i] is None:
                        grams[i] = torch.zeros(h.shape[-1], h.shape[-1], dtype=torch.float64, device=device)
                    gram_accumulate(h, state["mask"], grams[i])

                handles.append(writer.register_forward_pre_hook(ghook))
        n_tokens = 0
        for b in batches:
            state["mask"] = None if b.attention_mask is None else b.attention_mask.to(device)
            n_tokens += b.tokens
            try:
                model(input_ids=b.input_ids.to(device), attention_mask=state["mask"], use_cache=False)
            except _Stop:
                pass
    finally:
        for h in handles:
            h.remove()
    return Statistics([c.cpu() for c in covs], [g.cpu() for g in grams] if mlp else None, n_tokens, normalize_tokens)


def gram_accumulate(h: torch.Tensor, mask: torch.Tensor | None, out: torch.Tensor) -> torch.Tensor:
    """out += H^T diag(mask) H for MLP activations H [..., m].

    Used to choose and refit neurons, not to rotate the stream: one product per batch in the
    activations' own precision (at least fp32), summed across batches in float64. Float64 models
    stay float64 end to end.
    """
    hf = h.reshape(-1, h.shape[-1])
    if hf.dtype in (torch.float16, torch.bfloat16):
        hf = hf.float()
    if mask is not None:
        hf = hf * mask.reshape(-1, 1).to(hf.dtype)
    out += (hf.T @ hf).to(torch.float64)
    return out


# -- parameter count ------------------------------------------------------------------------------
class ParamModel:
    """Exact parameter count of a sliced model as a function of its widths.

    ``count(dims, intermediate_sizes)`` equals ``count_parameters`` of the model ``slice_model``
    builds with those widths (tested on every architecture).
    """

    def __init__(self, model: nn.Module, adapter: Adapter, tied: bool, share_basis: int = 1):
        self.adapter = adapter
        self.tied = tied
        self.share = int(share_basis)
        self.sequential = adapter.layout == "sequential"
        layers = adapter.layers(model)
        self.n_layers = len(layers)
        self.layer_terms = []
        self.full_inter = []
        for layer in layers:
            attn, attn_norm, mlp, mlp_norm = layer_parts(adapter, layer)
            readers = [getattr(attn, n) for n in adapter.attn_readers]
            writer = getattr(attn, adapter.attn_writer)
            m_readers = [getattr(mlp, n) for n in adapter.mlp_readers]
            m_writer = getattr(mlp, adapter.mlp_writer)
            skip = {id(p) for lin in readers + [writer] for p in lin.parameters()}
            attn_other = sum(p.numel() for p in attn.parameters() if id(p) not in skip)
            mlp_other = 0
            if adapter.mlp_name:
                skip_m = {id(p) for lin in m_readers + [m_writer] for p in lin.parameters()}
                mlp_other = sum(p.numel() for p in mlp.parameters() if id(p) not in skip_m)
            self.layer_terms.append(dict(
                attn_in=sum(r.out_features for r in readers),
                attn_bias=sum(r.out_features for r in readers if reader_has_bias(adapter, r, attn_norm)),
                o_in=writer.in_features, o_bias=writer.bias is not None,
                n_mlp_readers=len(m_readers),
                mlp_reader_biases=sum(1 for r in m_readers if reader_has_bias(adapter, r, mlp_norm)),
                down_bias=m_writer.bias is not None, other=attn_other + mlp_other,
            ))
            self.full_inter.append(m_writer.in_features)
        self.embed_rows = sum(e.num_embeddings for e in adapter.embeddings(model))
        head = adapter.lm_head(model)
        self.vocab = head.out_features
        self.head_bias = reader_has_bias(adapter, head, adapter.final_norm(model))
        self.centred = adapter.norm == "layernorm"
        base = adapter.base(model)
        counted = {id(p) for m in [adapter.layers(model), adapter.final_norm(model), *adapter.embeddings(model)]
                   for p in m.parameters()}
        counted |= {id(p) for p in head.parameters()}
        self.base_other = sum(p.numel() for p in base.parameters() if id(p) not in counted)
        self.d = model.config.hidden_size

    def layer_count(self, i: int, k_in: int, k_mid: int, k_out: int, m: int) -> int:
        from .structure import shared_connection

        n_pos = self.n_layers * (2 if self.sequential else 1) + 1
        c_attn = 2 * i if self.sequential else i
        t = self.layer_terms[i]
        if not self.sequential:
            k_mid = k_in  # the MLP reads the layer input
            k_attn_out = k_out
        else:
            k_attn_out = k_mid
        n = t["attn_in"] * k_in + t["attn_bias"] + k_attn_out * t["o_in"] + (k_attn_out if t["o_bias"] else 0)
        n += t["n_mlp_readers"] * m * k_mid + t["mlp_reader_biases"] * m + k_out * m + (k_out if t["down_bias"] else 0)
        if not shared_connection(c_attn, n_pos, self.share):  # shortcut matrices (identity: none)
            n += k_in * k_attn_out
        if self.sequential and not shared_connection(c_attn + 1, n_pos, self.share):
            n += k_mid * k_out
        return n + t["other"]

    def head_count(self, k_last: int) -> int:
        if self.tied:
            mean_terms = (k_last + self.vocab) if self.centred else 0  # LayerNorm: the mean direction's rank-one term
            return k_last * k_last + (self.vocab if self.head_bias else 0) + mean_terms
        return self.vocab * k_last + (self.vocab if self.head_bias else 0)

    def count(self, dims: list[int], intermediate_sizes: list[int] | None = None) -> int:
        inter = intermediate_sizes or self.full_inter
        total = self.embed_rows * dims[0] + self.head_count(dims[-1]) + self.base_other
        for i in range(self.n_layers):
            if self.sequential:
                k_in, k_mid, k_out = dims[2 * i], dims[2 * i + 1], dims[2 * i + 2]
            else:
                k_in, k_mid, k_out = dims[i], dims[i], dims[i + 1]
            total += self.layer_count(i, k_in, k_mid, k_out, inter[i])
        return int(total)


# -- allocation -----------------------------------------------------------------------------------
@dataclass
class Group:
    """One allocation unit: residual positions sharing a width, or one layer's MLP (``layer`` set).

    cost[j] is the (weighted) error of narrowing the group to width j * step (j = 0 .. n_steps),
    non-increasing in j, cost[n_steps] = 0 (full width).
    """

    name: str
    positions: tuple[int, ...]
    layer: int | None
    full: int
    step: int
    cost: list[float]
    minimum: int


def position_groups(n_pos: int, tied: bool, slice_last: bool, share_basis: int = 1) -> list[tuple[int, ...]]:
    """Residual positions that share one basis and one width (the last one left out when unsliced)."""
    g = max(1, int(share_basis))
    members = [tuple(range(p, min(p + g, n_pos - 1))) for p in range(0, n_pos - 1, g)] + [(n_pos - 1,)]
    if tied:
        members = [members[0] + (n_pos - 1,)] + members[1:-1]
    elif not slice_last:
        members = members[:-1]
    return members


def residual_groups(stats: Statistics, n_pos: int, d: int, round_to: int, tied: bool, slice_last: bool,
                    weights: dict | None = None, min_width: int | dict | None = None, damp: float = 0.01,
                    share_basis: int = 1) -> list[Group]:
    """Groups for the residual positions with their discarded-mass curves (optionally weighted)."""
    groups = []
    members = position_groups(n_pos, tied, slice_last, share_basis)
    n_steps = d // round_to
    for pos in members:
        lo = min_width or round_to
        if isinstance(min_width, dict):
            lo = int(min_width.get(_key(pos), round_to))
        q = stats.basis(pos, damp)
        tail = torch.zeros(d + 1, dtype=torch.float64)
        for p in pos:
            e = stats.energies(p, q)
            # discarded share when keeping k columns: sum of e[k:]
            suffix = torch.flip(torch.cumsum(torch.flip(e, [0]), 0), [0])
            tail += torch.cat([suffix, torch.zeros(1, dtype=torch.float64)])
        w = 1.0 if weights is None else float(weights[_key(pos)])
        cost = [w * float(tail[j * round_to]) for j in range(n_steps + 1)]
        if d % round_to:  # full width is not a multiple of round_to: the top step goes straight to d
            cost[-1] = 0.0
        groups.append(Group(f"pos{'+'.join(map(str, pos))}", pos, None, d, round_to, cost, lo))
    return groups


def _key(positions) -> str:
    return "+".join(str(p) for p in positions)


def mlp_groups(stats: Statistics, model: nn.Module, adapter: Adapter, round_to: int, weights: dict | None = None,
               max_prune: float = 0.75, damp: float = 0.01, block: int | None = None,
               min_width: dict | None = None) -> list[Group]:
    """Groups for each layer's MLP width with the OBS refit-error curve relative to the output trace."""
    from .mlp_prune import obs_order

    if stats.mlp_grams is None:
        raise ValueError("MLP width allocation needs statistics collected with mlp=True")
    groups = []
    sequential = adapter.layout == "sequential"
    for i, layer in enumerate(adapter.layers(model)):
        _, _, mlp, _ = layer_parts(adapter, layer)
        w = getattr(mlp, adapter.mlp_writer).weight
        gram = stats.mlp_grams[i]
        m = gram.shape[0]
        n_steps = m // round_to
        n_remove = min(m - round_to, int(max_prune * m) // round_to * round_to)
        _, err = obs_order(gram, w, n_remove, damp=damp, block=block or 32)
        out_pos = 2 * i + 2 if sequential else i + 1
        c_out = stats.covariances[out_pos]
        if adapter.norm == "layernorm":
            pass  # the stream is already centred in the statistics; the writer's output is centred with it
        scale = float(c_out.diagonal().sum())
        wt = 1.0 if weights is None else float(weights[f"mlp{i}"])
        cost = []
        for j in range(n_steps + 1):
            removed = m - j * round_to if j < n_steps else 0
            if m % round_to and j == n_steps:
                removed = 0
            if removed <= 0:
                cost.append(0.0)
            elif removed > n_remove:
                cost.append(math.inf)
            else:
                cost.append(wt * float(err[removed - 1]) / scale)
        lo = max(round_to, m - n_remove, int((min_width or {}).get(f"mlp{i}", 0)))
        groups.append(Group(f"mlp{i}", (), i, m, round_to, cost, lo))
    return groups


def allocate(pm: ParamModel, groups: list[Group], target_params: int, n_pos: int, d: int,
             fixed_last: int | None = None) -> tuple[list[int], list[int] | None]:
    """Greedy marginal allocation: narrow the cheapest-error-per-parameter group until the count fits.

    Returns (dims, intermediate_sizes or None when no MLP group is given).
    """
    dims = [d] * n_pos
    inter = list(pm.full_inter)
    has_mlp = any(g.layer is not None for g in groups)
    width = {id(g): g.full for g in groups}

    def apply(g, w):
        if g.layer is not None:
            inter[g.layer] = w
        else:
            for p in g.positions:
                dims[p] = w

    def next_width(g):
        w = width[id(g)]
        nw = (w - 1) // g.step * g.step  # largest multiple of step below w
        return nw if nw >= g.minimum else None

    total = pm.count(dims, inter)
    if total <= target_params:
        return dims, (inter if has_mlp else None)
    while total > target_params:
        best, best_ratio, best_total = None, math.inf, None
        for g in groups:
            nw = next_width(g)
            if nw is None:
                continue
            old = width[id(g)]
            apply(g, nw)
            new_total = pm.count(dims, inter)
            apply(g, old)
            saved = total - new_total
            if saved <= 0:
                continue
            c_old = g.cost[min(old // g.step, len(g.cost) - 1)] if old % g.step == 0 else 0.0
            delta = g.cost[nw // g.step] - c_old
            ratio = delta / saved
            if ratio < best_ratio:
                best, best_ratio, best_total = g, ratio, new_total
        if best is None:
            raise ValueError(
                f"cannot reach {target_params:,} parameters: every group is at its minimum width "
                f"({total:,} parameters left)"
            )
        width[id(best)] = next_width(best)
        apply(best, width[id(best)])
        total = best_total
    return dims, (inter if has_mlp else None)


# -- measured sensitivity ---------------------------------------------------------------------------
@torch.no_grad()
def measure_sensitivity(model: nn.Module, adapter: Adapter, stats: Statistics, windows: torch.Tensor, *,
                        tied: bool, slice_last: bool, probe: float = 0.5, mlp_probe: float | None = None,
                        round_to: int = 8, damp: float = 0.01, batch_size: int = 4, progress: bool = False,
                        share_basis: int = 1) -> dict:
    """Held-out loss increase when ONE group is narrowed in the dense model, per unit discarded mass.

    For each residual group, the stream at its position(s) is projected onto the first
    ``probe * d`` columns of its basis (what slicing that position alone does, before the later
    layers compensate); for each MLP (when ``mlp_probe`` is set), the layer's MLP keeps
    ``mlp_probe * m`` neurons chosen and refitted as slicing does. The mean token loss on
    ``windows`` is compared with the dense loss. Returns {"dense_loss", "probe_width",
    "groups": {key: {"width", "delta_loss", "mass", "weight"}}} where weight = delta_loss / mass
    is what ``budget="sensitivity"`` multiplies the discarded mass by. Single-position effects are
    small, so the probe is aggressive (half the width by default: a milder one drowns in the
    held-out set's noise -- measured: at 0.7 d a quarter of the positions LOWERED the loss), a
    loss change below 5% of the median is clipped to that, and the allocation never narrows a
    group below its probe width (no extrapolation past what was measured).
    """
    from .mlp_prune import refit_writer, select_neurons

    device = next(model.parameters()).device
    d = model.config.hidden_size
    n_pos = len(stats.covariances)
    windows = windows.to(device)
    centre = adapter.norm == "layernorm"
    layers = adapter.layers(model)
    final_norm, head = adapter.final_norm(model), adapter.lm_head(model)
    batches = [Batch(windows[s : s + batch_size], None) for s in range(0, windows.shape[0], batch_size)]

    # Narrowing a group changes nothing before its first layer: cache the dense input of every
    # layer once, and run each probe from the first layer it touches (half the work on average).
    xs, kws = capture_first_layer_inputs(model, layers, batches, device)
    layer_inputs = [xs]
    for layer in layers[:-1]:
        layer_inputs.append([_layer_out(layer(x, **kw)) for x, kw in zip(layer_inputs[-1], kws)])

    def loss(start: int = 0) -> float:
        total, count = 0.0, 0
        for x, kw, b in zip(layer_inputs[start], kws, batches):
            for layer in layers[start:]:
                x = _layer_out(layer(x, **kw))
            logits = head(final_norm(x))[:, :-1].float()
            ids = b.input_ids
            total += float(nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1),
                                                       reduction="sum"))
            count += ids[:, 1:].numel()
        return total / count

    dense = loss()
    hooks = {pos: (module, kind) for module, pos, kind in position_hooks(model, adapter)}
    k_probe = max(round_to, int(probe * d) // round_to * round_to)
    members = position_groups(n_pos, tied, slice_last, share_basis)
    out = {"dense_loss": dense, "probe_width": k_probe, "groups": {}}
    items = list(members)
    if mlp_probe is not None:
        items += [("mlp", i) for i in range(len(adapter.layers(model)))]
    bar = None
    if progress:
        try:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(items), desc="sensitivity", unit="group")
        except ImportError:
            bar = None
    for item in items:
        handles = []
        try:
            if item and item[0] == "mlp":
                i = item[1]
                layer = adapter.layers(model)[i]
                _, _, mlp, _ = layer_parts(adapter, layer)
                writer = getattr(mlp, adapter.mlp_writer)
                gram = stats.mlp_grams[i]
                m = gram.shape[0]
                keep_n = max(round_to, int(mlp_probe * m) // round_to * round_to)
                keep = select_neurons(gram, writer.weight, keep_n, damp=damp, block=32)
                w_fit = refit_writer(gram, writer.weight, keep, damp).to(writer.weight.dtype).to(device)
                keep_d = keep.to(device)

                def fhook(mod, args, output, keep_d=keep_d, w_fit=w_fit):
                    h = args[0]
                    return nn.functional.linear(h[..., keep_d], w_fit, mod.bias)

                handles.append(writer.register_forward_hook(fhook))
                mass = _mlp_mass(stats, adapter, i, gram, writer.weight, keep, w_fit)
                key, width, start = f"mlp{i}", keep_n, i
            else:
                q = stats.basis(item, damp).to(device)
                proj = q[:, :k_probe]
                for p in item:
                    handles += _projection_hooks(model, adapter, hooks, p, proj, centre)
                mass = float(sum(float(stats.energies(p, stats.basis(item, damp))[k_probe:].sum()) for p in item))
                key, width = _key(item), k_probe
                first = min(item)
                start = first // 2 if adapter.layout == "sequential" else first
                start = min(start, len(layers) - 1)
            delta = loss(start) - dense
        finally:
            for h in handles:
                h.remove()
        out["groups"][key] = {"width": width, "delta_loss": delta, "mass": mass}
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    deltas = sorted(g["delta_loss"] for g in out["groups"].values())
    floor = max(0.05 * deltas[len(deltas) // 2], 1e-6)
    for g in out["groups"].values():
        g["weight"] = max(g["delta_loss"], floor) / max(g["mass"], 1e-12)
    return out


def _layer_out(out):
    return out[0] if isinstance(out, tuple) else out


def _mlp_mass(stats, adapter, i, gram, weight, keep, w_fit) -> float:
    from .mlp_prune import prune_error

    out_pos = 2 * i + 2 if adapter.layout == "sequential" else i + 1
    return prune_error(gram, weight, keep.cpu(), w_fit.cpu().to(torch.float64)) / float(
        stats.covariances[out_pos].diagonal().sum())


def _projection_hooks(model, adapter, hooks, pos, proj, centre):
    """Hooks that replace the residual stream at ``pos`` by its projection on span(proj) (d x k)."""

    def project(x):
        xf = x.to(proj.dtype)
        if centre:  # LayerNorm models: the sliced stream is the centred one
            xf = xf - xf.mean(-1, keepdim=True)
        return ((xf @ proj) @ proj.T).to(x.dtype)

    module, kind = hooks[pos]
    if kind in ("layer", "final"):
        def pre(mod, args, kwargs):
            if args:
                return (project(args[0]),) + tuple(args[1:]), kwargs
            kwargs = dict(kwargs)
            kwargs["hidden_states"] = project(kwargs["hidden_states"])
            return args, kwargs

        return [module.register_forward_pre_hook(pre, with_kwargs=True)]
    # "mid": the stream after the attention residual add. The norm's input is that stream, but the
    # residual connection carries it too, so change the attention output: a' = P(x + a) - x.
    layer_idx = next(i for i, layer in enumerate(adapter.layers(model))
                     if layer_parts(adapter, layer)[3] is module)
    layer = adapter.layers(model)[layer_idx]
    attn = getattr(layer, adapter.attn_name)
    state = {}

    def grab(mod, args, kwargs):
        state["x"] = _hidden_arg(args, kwargs)

    def fix(mod, args, kwargs, output):
        a = output[0] if isinstance(output, tuple) else output
        x = state["x"]
        new = project(x + a) - x
        return (new,) + tuple(output[1:]) if isinstance(output, tuple) else new

    return [layer.register_forward_pre_hook(grab, with_kwargs=True),
            attn.register_forward_hook(fix, with_kwargs=True)]
