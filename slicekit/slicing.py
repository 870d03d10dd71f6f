"""Layer-wise SliceGPT: fuse norms, choose rotations from calibration data, rotate and slice.

Reads top to bottom like DESIGN.md:
  1. the adapter says where the residual stream is read and written;
  2. norm fusion is folded into the rotations themselves (gamma into the readers' Q, LayerNorm
     centring into the writers' Q), so weights go to the rotate-and-slice op in their own dtype;
  3. calibration signals at each residual position are computed through the already rotated and
     sliced prefix, accumulated in float64 (``slicekit.ops.covariance``), eigendecomposed in float64;
  4. readers, writers, embeddings and head are rotated and sliced (``slicekit.ops.rotate_slice``),
     and every residual connection gets its change-of-basis matrix S.
The caller's model is never modified: the sliced model is a new object.
"""
from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from .adapters import Adapter, get_adapter, norm_params
from .calibration import CalibrationError, capture_first_layer_inputs, make_batches
from .modules import SlicedDecoderLayer
from .ops import covariance, resolve_backend, rotate_slice
from .pca import explained_variance, pca_basis, random_orthogonal
from .report import SliceReport, count_parameters
from .structure import all_buffers, layer_dims, layer_parts, meta_tensor_names, set_tensor, sliced_skeleton


class NonFiniteActivationsError(RuntimeError):
    """NaN or Inf reached a calibration signal: slicing would produce garbage."""


ROTATIONS = ("pca", "random", "identity")


def sliced_width(d: int, sparsity: float, round_to: int) -> int:
    """Kept width: floor((1 - s) d) rounded DOWN to a multiple of round_to (at least round_to, at most d)."""
    k = int(math.floor((1.0 - sparsity) * d + 1e-9))
    k -= k % round_to
    return int(min(d, max(round_to, k)))


def uniform_dims(adapter: Adapter, num_layers: int, d: int, sparsity: float, round_to: int, slice_head: bool) -> list[int]:
    k = sliced_width(d, sparsity, round_to)
    dims = [k] * adapter.num_positions(num_layers)
    if not slice_head:
        dims[-1] = d
    return dims


@dataclass
class _Clock:
    """Wall time per stage; synchronises CUDA so asynchronous kernels are charged to the right stage."""

    device: torch.device

    def __post_init__(self):
        self.totals: dict[str, float] = {}

    @contextmanager
    def __call__(self, stage: str):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.totals[stage] = self.totals.get(stage, 0.0) + time.perf_counter() - t0


class _Slicer:
    """State of one slicing run (kept in one place so the per-position steps stay short)."""

    def __init__(self, model, adapter, batches, dims, device, backend, rotation, damp, seed, progress):
        self.model = model
        self.adapter = adapter
        self.batches = batches
        self.dims = dims
        self.device = device
        self.backend = backend
        self.rotation = rotation
        self.damp = damp
        self.generator = torch.Generator().manual_seed(seed)
        self.progress = progress
        self.d = model.config.hidden_size
        self.dtype = next(model.parameters()).dtype
        # Activations are combined in at least fp32 (the skip-connection change of basis must not
        # round twice), and never below the model's own precision (float64 test models).
        self.work_dtype = torch.promote_types(self.dtype, torch.float32)
        # On the GPU fast path the skip-connection maps run on tensor cores in the model dtype: the
        # signals are stored in that dtype anyway, and fp32 GEMMs over every calibration token would
        # cost more than the covariance kernels save (see README, slicing pipeline benchmark).
        self.fast = device.type == "cuda" and resolve_backend("covariance_accumulate", backend, device) != "torch"
        if self.fast:
            self.work_dtype = self.dtype
        self.centre = adapter.norm == "layernorm"
        self.clock = _Clock(device)
        self.evr: list[float] = []
        self.eigvals: list[list[float]] = []
        self.masks = [None if b.attention_mask is None else b.attention_mask.to(device) for b in batches]

    # -- rotations -------------------------------------------------------------------------
    def basis(self, signals: list[torch.Tensor], position: int, what: str) -> torch.Tensor:
        """Q for one residual position from its full-width signals (list of [B, T, d])."""
        with self.clock("covariance"):
            cov = torch.zeros(self.d, self.d, dtype=torch.float64, device=self.device)
            for x, m in zip(signals, self.masks):
                covariance(x, m, cov, backend=self.backend)
        if not bool(torch.isfinite(cov).all()):
            raise NonFiniteActivationsError(
                f"NaN/Inf activations at residual position {position} ({what}); the model produces non-finite "
                f"values on the calibration data (check its dtype: fp16 overflow is the usual cause)"
            )
        with self.clock("eigh"):
            q, eig = pca_basis(cov, self.damp)
        self.evr.append(explained_variance(eig, self.dims[position]))
        self.eigvals.append(eig.cpu().tolist())
        if self.rotation == "random":
            q = random_orthogonal(self.d, self.generator, device=self.device)
        elif self.rotation == "identity":
            q = torch.eye(self.d, dtype=torch.float64, device=self.device)
        return q

    # -- weights -----------------------------------------------------------------------------
    def _w(self, t: torch.Tensor) -> torch.Tensor:
        return t.detach().to(self.device)

    def reader(self, linear: nn.Module, norm: nn.Module, q: torch.Tensor, k: int):
        """(W diag(gamma) Q)[:, :k] and b + W beta for a module reading the normed stream."""
        gamma, beta, _ = norm_params(norm)
        qk = q[:, :k]
        if gamma is not None:
            qk = gamma.detach().to(self.device, torch.float64).unsqueeze(1) * qk
        w = self._w(linear.weight)
        with self.clock("rotate_slice"):
            new_w = rotate_slice(w, qk, k, dim=1, out_dtype=self.dtype, backend=self.backend)
        bias = None if linear.bias is None else self._w(linear.bias).to(torch.float64)
        if self.centre and beta is not None:
            wb = w.to(torch.float64) @ beta.detach().to(self.device, torch.float64)
            bias = wb if bias is None else bias + wb
        return new_w, None if bias is None else bias.to(self.dtype)

    def writer_basis(self, q: torch.Tensor, k: int) -> torch.Tensor:
        """Q[:, :k] with LayerNorm centring folded in: (M Q) where M = I - 11^T/d."""
        qk = q[:, :k]
        if self.centre:
            qk = qk - qk.mean(dim=0, keepdim=True)
        return qk

    def writer(self, linear: nn.Module, q: torch.Tensor, k: int):
        """(Q^T M W)[:k, :] and (Q^T M b)[:k] for a module writing into the residual stream."""
        qk = self.writer_basis(q, k)
        with self.clock("rotate_slice"):
            new_w = rotate_slice(self._w(linear.weight), qk, k, dim=0, out_dtype=self.dtype, backend=self.backend)
        bias = None
        if linear.bias is not None:
            bias = (qk.T @ self._w(linear.bias).to(torch.float64)).to(self.dtype)
        return new_w, bias

    def shortcut(self, q_in: torch.Tensor, k_in: int, q_out: torch.Tensor, k_out: int) -> torch.Tensor:
        return (q_in[:, :k_in].T @ q_out[:, :k_out]).to(self.dtype)

    # -- signals -------------------------------------------------------------------------------
    def to_full(self, x: torch.Tensor, q: torch.Tensor, k: int) -> torch.Tensor:
        """Map a sliced stream back to the original basis: x Q[:, :k]^T (what the skip carries)."""
        return x.to(self.work_dtype) @ q[:, :k].T.to(self.work_dtype)

    def to_sliced(self, x_full: torch.Tensor, q: torch.Tensor, k: int) -> torch.Tensor:
        return (x_full.to(self.work_dtype) @ q[:, :k].to(self.work_dtype)).to(self.dtype)

    def written(self, h: torch.Tensor, linear: nn.Module) -> torch.Tensor:
        """A writer's contribution in the original (unrotated) basis, centred for LayerNorm models."""
        w = self._w(linear.weight)
        out = nn.functional.linear(h, w, None if linear.bias is None else self._w(linear.bias)).to(self.work_dtype)
        if self.centre:
            out = out - out.mean(dim=-1, keepdim=True)
        return out


def _assign_linear(module: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    module.weight = nn.Parameter(weight)
    module.in_features, module.out_features = weight.shape[1], weight.shape[0]
    if bias is not None:
        module.bias = nn.Parameter(bias)
    elif getattr(module, "bias", None) is not None:
        raise AssertionError("skeleton expects a bias the slicer did not produce")


def _validate(model: nn.Module, sparsity: float, round_to: int, rotation: str) -> Adapter:
    if getattr(getattr(model, "config", None), "slicekit", None):
        raise ValueError("this model is already sliced (config.slicekit is set); slice the original model instead")
    adapter = get_adapter(model)
    if not isinstance(sparsity, (int, float)) or isinstance(sparsity, bool) or not (0.0 <= float(sparsity) < 1.0):
        raise ValueError(f"sparsity must be a number in [0, 1), got {sparsity!r}")
    if not isinstance(round_to, int) or round_to < 1:
        raise ValueError(f"round_to must be a positive integer, got {round_to!r}")
    if rotation not in ROTATIONS:
        raise ValueError(f"rotation must be one of {ROTATIONS}, got {rotation!r}")
    dtypes = {p.dtype for p in model.parameters()}
    bad = [dt for dt in dtypes if dt not in (torch.float16, torch.bfloat16, torch.float32, torch.float64)]
    if bad:
        raise TypeError(f"slicekit slices float16/bfloat16/float32/float64 models; this one holds {bad} (quantised?)")
    if len(dtypes) > 1:
        raise TypeError(f"the model mixes parameter dtypes {sorted(map(str, dtypes))}; cast it to one dtype first")
    if any(p.is_meta for p in model.parameters()):
        raise ValueError("the model has parameters on the meta device (not loaded); load its weights first")
    return adapter


@torch.no_grad()
def slice_model(
    model: nn.Module,
    calibration,
    *,
    sparsity: float,
    round_to: int = 8,
    slice_head: bool = False,
    dims: list[int] | None = None,
    batch_size: int = 8,
    device: str | torch.device | None = None,
    backend: str | None = None,
    rotation: str = "pca",
    damp: float = 0.01,
    seed: int = 0,
    progress: bool = True,
):
    """Slice a Hugging Face causal LM with SliceGPT; return ``(sliced_model, report)``.

    Args:
        model: a transformers ``*ForCausalLM`` of a supported type (llama, mistral, qwen2, opt, phi),
            in float16/bfloat16/float32/float64, on the CPU or one GPU. It is not modified.
        calibration: token ids: a LongTensor [n, T], a dict with ``input_ids`` (and optionally
            ``attention_mask`` marking padding with 0), or a list of those.
        sparsity: fraction of the residual width to remove, in [0, 1).
        round_to: kept widths are multiples of this (8 minimum for tensor cores; 64/128 faster).
        slice_head: also slice the final residual position (the head's input).
        dims: explicit width per residual position (overrides sparsity/round_to/slice_head).
        batch_size: calibration rows per forward.
        device: where the layer-wise computation runs (default: the model's device). With
            ``device="cuda"`` and a model in CPU memory, one layer at a time visits the GPU.
        backend: op backend for the covariance and rotate-and-slice ops (None: automatic).
        rotation: "pca" (SliceGPT), or "random"/"identity" (exact-invariance checks).
        damp: eigh damping as a fraction of mean(diag C).
        seed: seed for ``rotation="random"``.
        progress: show a progress bar per layer.

    Returns:
        (sliced, report): ``sliced`` is a new model of the same class (tied embeddings untied,
        norms parameter-free, ``config.slicekit`` set); ``report`` is a :class:`SliceReport`.
    """
    t_start = time.perf_counter()
    adapter = _validate(model, sparsity, round_to, rotation)
    cfg = model.config
    d = cfg.hidden_size
    layers = adapter.layers(model)
    n_pos = adapter.num_positions(len(layers))
    if dims is None:
        dims = uniform_dims(adapter, len(layers), d, float(sparsity), round_to, slice_head)
    else:
        dims = [int(k) for k in dims]
        if len(dims) != n_pos or not all(1 <= k <= d for k in dims):
            raise ValueError(f"dims must list {n_pos} widths in [1, {d}], got {dims}")
        slice_head = dims[-1] < d
    batches = make_batches(calibration, batch_size, cfg.vocab_size)
    n_tokens = sum(b.tokens for b in batches)
    if n_tokens < d:
        raise CalibrationError(
            f"too little calibration data: {n_tokens} tokens for a {d}-dimensional residual stream; PCA needs at "
            f"least {d} tokens (SliceGPT uses ~1000x more)"
        )
    model_device = next(model.parameters()).device
    device = torch.device(device) if device is not None else model_device
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    was_training = model.training
    model.eval()

    meta = dict(sparsity=float(sparsity), round_to=round_to, slice_head=bool(slice_head), rotation=rotation, damp=damp)
    sliced = sliced_skeleton(model, adapter, dims, meta)
    s = _Slicer(model, adapter, batches, dims, device, backend, rotation, damp, seed, progress)
    try:
        with s.clock("forward"):
            xs, kws = capture_first_layer_inputs(model, layers, batches, device)
            if s.centre:
                xs = [(x.to(s.work_dtype) - x.to(s.work_dtype).mean(-1, keepdim=True)).to(s.dtype) for x in xs]
        q = s.basis(xs, 0, "embeddings")
        for emb_new, emb in zip(adapter.embeddings(sliced), adapter.embeddings(model)):
            qk = s.writer_basis(q, dims[0])  # embeddings write the stream: centre them like writers
            with s.clock("rotate_slice"):
                w = rotate_slice(s._w(emb.weight), qk, dims[0], dim=1, out_dtype=s.dtype, backend=backend)
            emb_new.weight = nn.Parameter(w.to(model_device))
        xs = [s.to_sliced(x, q, dims[0]) for x in xs]

        bar = _progress(len(layers), progress, f"slicing {adapter.name} ({d} -> {min(dims)}..{max(dims)})")
        for i, layer in enumerate(layers):
            new_layer: SlicedDecoderLayer = adapter.layers(sliced)[i]
            xs, q = _slice_layer(s, i, layer, new_layer, xs, kws, q)
            new_layer.to(model_device)
            bar.update(1)
        bar.close()

        # The head reads the final normed stream: gamma (and beta) fold into it like any reader.
        final_norm = adapter.final_norm(model)
        w, b = s.reader(adapter.lm_head(model), final_norm, q, dims[-1])
        _assign_linear(sliced.lm_head, w.to(model_device), None if b is None else b.to(model_device))
        del xs
    except BaseException:
        del sliced
        raise
    finally:
        model.train(was_training)

    # Buffers nobody recomputes (rotary tables, position ids) come from the original model.
    originals = all_buffers(model)
    for name, buf in all_buffers(sliced).items():
        if buf.is_meta:
            if name not in originals:
                raise RuntimeError(f"sliced model buffer {name} has no counterpart in the original model")
            set_tensor(sliced, name, originals[name].clone())
    missing = meta_tensor_names(sliced)
    if missing:
        raise RuntimeError(f"internal error: tensors left unset after slicing: {missing[:8]}")
    sliced.eval()

    report = SliceReport.build(
        model=model, sliced=sliced, adapter=adapter, dims=dims, evr=s.evr, n_tokens=n_tokens,
        n_sequences=sum(b.input_ids.shape[0] for b in batches), stage_seconds=s.clock.totals,
        total_seconds=time.perf_counter() - t_start, device=device, meta=meta,
        backend=backend, eigvals=s.eigvals,
    )
    return sliced, report


def _slice_layer(s: _Slicer, i: int, layer: nn.Module, new: SlicedDecoderLayer, xs, kws, q_in):
    """Rotate and slice decoder layer i; return the next position's sliced signals and basis."""
    a = s.adapter
    dims = s.dims
    k_in, k_mid, k_out = layer_dims(a, dims, i)
    attn, attn_norm, mlp, mlp_norm = layer_parts(a, layer)
    _move_real(new, s.device)

    for name in a.attn_readers:
        w, b = s.reader(getattr(attn, name), attn_norm, q_in, k_in)
        _assign_linear(getattr(new.self_attn, name), w, b)
    attn_writer = getattr(attn, a.attn_writer)
    mlp_writer = getattr(mlp, a.mlp_writer)
    mlp_new_readers = [getattr(new.mlp, n) for n in a.mlp_readers]

    if a.layout == "parallel":
        for name, target in zip(a.mlp_readers, mlp_new_readers):
            w, b = s.reader(getattr(mlp, name), attn_norm, q_in, k_in)
            _assign_linear(target, w, b)
        full = []
        with s.clock("forward"):
            for x, kw in zip(xs, kws):
                normed = new.attn_norm(x)
                heads = new.self_attn(hidden_states=normed, **kw)[0]
                inter = new.mlp(normed)
                full.append(
                    (s.to_full(x, q_in, k_in) + s.written(heads, attn_writer) + s.written(inter, mlp_writer)).to(s.dtype)
                )
        pos_out = i + 1
        q_out = _next_basis(s, full, pos_out, f"output of layer {i}")
        for lin_new, lin in ((new.attn_out, attn_writer), (new.mlp_out, mlp_writer)):
            w, b = s.writer(lin, q_out, k_out)
            _assign_linear(lin_new, w, b)
        new.attn_shortcut = nn.Parameter(s.shortcut(q_in, k_in, q_out, k_out))
        return [s.to_sliced(f, q_out, k_out) for f in full], q_out

    # Sequential: attention block, then the MLP block, each with its own residual position.
    mids = []
    with s.clock("forward"):
        for x, kw in zip(xs, kws):
            heads = new.attention(x, **kw)
            mids.append((s.to_full(x, q_in, k_in) + s.written(heads, attn_writer)).to(s.dtype))
    q_mid = _next_basis(s, mids, 2 * i + 1, f"layer {i} after attention")
    w, b = s.writer(attn_writer, q_mid, k_mid)
    _assign_linear(new.attn_out, w, b)
    new.attn_shortcut = nn.Parameter(s.shortcut(q_in, k_in, q_mid, k_mid))
    mids = [s.to_sliced(m, q_mid, k_mid) for m in mids]

    for name, target in zip(a.mlp_readers, mlp_new_readers):
        w, b = s.reader(getattr(mlp, name), mlp_norm, q_mid, k_mid)
        _assign_linear(target, w, b)
    outs = []
    with s.clock("forward"):
        for x in mids:
            inter = new.mlp(new.mlp_norm(x))
            outs.append((s.to_full(x, q_mid, k_mid) + s.written(inter, mlp_writer)).to(s.dtype))
    pos_out = 2 * i + 2
    q_out = _next_basis(s, outs, pos_out, f"output of layer {i}")
    w, b = s.writer(mlp_writer, q_out, k_out)
    _assign_linear(new.mlp_out, w, b)
    new.mlp_shortcut = nn.Parameter(s.shortcut(q_mid, k_mid, q_out, k_out))
    return [s.to_sliced(o, q_out, k_out) for o in outs], q_out


def _move_real(module: nn.Module, device: torch.device) -> None:
    """Module.to(device) that leaves meta tensors (still to be computed) where they are."""
    module._apply(lambda t: t if t.is_meta else t.to(device))


def _next_basis(s: _Slicer, signals, position: int, what: str) -> torch.Tensor:
    last = position == len(s.dims) - 1
    if last and s.dims[-1] == s.d and s.rotation == "pca":
        # Unsliced head: keep the original basis (Q_L = I) -- exact, and the head is left as is.
        s.basis(signals, position, what)  # still measured, for the report
        return torch.eye(s.d, dtype=torch.float64, device=s.device)
    return s.basis(signals, position, what)


class _NullBar:
    def update(self, n=1):
        pass

    def close(self):
        pass


def _progress(total: int, enabled: bool, desc: str):
    if not enabled:
        return _NullBar()
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _NullBar()
    return tqdm(total=total, desc=desc, unit="layer")
