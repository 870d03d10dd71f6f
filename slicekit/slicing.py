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
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from .adapters import Adapter, get_adapter, norm_params
from .calibration import CalibrationError, capture_first_layer_inputs, make_batches
from .modules import SlicedDecoderLayer, TiedHead
from .ops import covariance, resolve_backend, rotate_slice, symmetrize_
from .pca import explained_variance, pca_basis, random_orthogonal
from .report import SliceReport, count_parameters
from .structure import all_buffers, layer_dims, layer_parts, meta_tensor_names, set_tensor, sliced_skeleton, tie_head
from .transfer import move, move_module, to_device


class NonFiniteActivationsError(RuntimeError):
    """NaN or Inf reached a calibration signal: slicing would produce garbage."""


ROTATIONS = ("pca", "random", "identity")
TIED_BASES = ("dense", "two_pass")
HEAD_FITS = ("gamma", "lstsq")
MLP_SELECTIONS = ("obs", "energy")


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
        self._open = False

    @contextmanager
    def __call__(self, stage: str):
        if self._open:  # nested: the enclosing stage already counts this time
            yield
            return
        self._open = True
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.totals[stage] = self.totals.get(stage, 0.0) + time.perf_counter() - t0
            self._open = False


class _Slicer:
    """State of one slicing run (kept in one place so the per-position steps stay short)."""

    def __init__(self, model, adapter, batches, dims, device, backend, rotation, damp, seed, progress,
                 tied=False, intermediate_sizes=None, head_fit="gamma", mlp_select="obs", normalize_tokens=False,
                 share_basis=1, kws=None):
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
        # Fast path: the skip-connection changes of basis (x Q_k^T, x Q_k) through the rotate-and-
        # slice kernel (Q as a hi + lo pair, one rounding) instead of an fp16 GEMM with Q rounded to
        # fp16 (an extra error as large as fp16 storage itself, at every residual position).
        # SLICEKIT_SIGNALS=fp16 restores the plain GEMM (benchmarks/slicing_pipeline.py compares).
        self.split_signals = self.fast and self.dtype in (torch.float16, torch.bfloat16) and \
            os.environ.get("SLICEKIT_SIGNALS", "split") != "fp16"
        self.centre = adapter.norm == "layernorm"
        self.clock = _Clock(device)
        self.evr: list[float] = []
        self.eigvals: list[list[float]] = []
        self.masks = [None if b.attention_mask is None else b.attention_mask.to(device) for b in batches]
        # Tied embeddings: the first and the last position share one basis (q_shared).
        self.tied = tied
        self.q_shared: torch.Tensor | None = None
        self.last_cov: torch.Tensor | None = None  # C_L of the model as sliced (for two-pass)
        self.last_norm_cov: torch.Tensor | None = None  # second moment of the final NORMED stream
        self.inter = intermediate_sizes
        self.head_fit = head_fit
        self.mlp_select = mlp_select
        self.mlp_kept: list[float] = []  # share of each MLP's output energy the pruned MLP keeps
        self.normalize_tokens = normalize_tokens
        # Runs of share_basis consecutive positions share one basis (identity shortcuts inside a run).
        self.share = int(share_basis)
        self.kws = kws
        # id(original tensor) -> (tensor, its copy on the compute device), for the current layer only
        self._resident: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        # Framed signals (see to_full). On by default where the signals are combined in fp32/fp64:
        # the framed writers' rounding is then negligible. Opt-in (SLICEKIT_SIGNAL_FRAME=1) for 16-bit
        # work, the GPU fast path: there the framed writers are rounded to 16 bits, and on the 7B
        # benchmark the forward stage went 9.31 -> 7.97 s while the agreement with the float64 path
        # went 8.1e-3 -> 8.8e-3 (README, slicing pipeline). SLICEKIT_SIGNAL_FRAME=0: off everywhere.
        # Never with shared bases (the look-ahead runs original blocks on original-basis signals),
        # nor where signals are combined in a wider dtype than the model's (fp16 models on the
        # CPU/reference path: the framed writers would need fp32 GEMMs over every token, dearer
        # than the map they save).
        frame_env = os.environ.get("SLICEKIT_SIGNAL_FRAME", "")
        wide = self.work_dtype in (torch.float32, torch.float64)
        self.framed = (self.share == 1 and self.work_dtype == self.dtype
                       and (frame_env == "1" or (frame_env != "0" and wide)))
        self.frame: torch.Tensor | None = None  # the basis the current full-width signals are expressed in
        self._framed_writers: dict = {}
        self._sliced_basis = None

    # -- rotations -------------------------------------------------------------------------
    def moment(self, signals: list[torch.Tensor], position: int, what: str) -> torch.Tensor:
        """float64 [d, d] second moment of full-width signals (list of [B, T, d]), padding excluded."""
        with self.clock("covariance"):
            cov = torch.zeros(self.d, self.d, dtype=torch.float64, device=self.device)
            for x, m in zip(signals, self.masks):
                if self.normalize_tokens:
                    x = unit_rms(x)
                covariance(x, m, cov, backend=self.backend, symmetric=False)
            symmetrize_(cov)
            if self.framed and self.frame is not None:  # signals in the frame Q: C = Q C_Q Q^T
                cov = symmetrize_(self.frame @ cov @ self.frame.T)
        if not bool(torch.isfinite(cov).all()):
            raise NonFiniteActivationsError(
                f"NaN/Inf activations at residual position {position} ({what}); the model produces non-finite "
                f"values on the calibration data (check its dtype: fp16 overflow is the usual cause)"
            )
        return cov

    def basis(self, signals: list[torch.Tensor], position: int, what: str, partners=None) -> torch.Tensor:
        """Q for one residual position from its full-width signals (list of [B, T, d]).

        ``partners``: second moments of other positions that must share this basis (the last
        position, for tied embeddings; the rest of its run, for ``share_basis`` > 1); Q is then
        the eigenbasis of the trace-normalised sum C/tr(C) + sum_j C_j/tr(C_j).
        """
        cov = self.moment(signals, position, what)
        partners = [c for c in (partners or []) if c is not None]
        if self.share > 1 and self.rotation == "pca":
            partners += self.lookahead(position, signals)
        with self.clock("eigh"):
            if not partners:
                q, eig = pca_basis(cov, self.damp)
            else:
                from .budget import combined_moment

                q, _ = pca_basis(combined_moment([cov] + [c.to(cov.device) for c in partners]), self.damp)
                eig = _energies(cov, q)
        self.evr.append(explained_variance(eig, self.dims[position]))
        self.eigvals.append(eig.cpu().tolist())
        if self.rotation == "random":
            q = random_orthogonal(self.d, self.generator, device=self.device)
        elif self.rotation == "identity":
            q = torch.eye(self.d, dtype=torch.float64, device=self.device)
        return q

    def lookahead(self, position: int, signals: list[torch.Tensor]) -> list[torch.Tensor]:
        """Second moments of the rest of ``position``'s shared run, predicted with ORIGINAL blocks.

        The full-width signals at the run's first position (everything before it already sliced)
        go through the unsliced blocks of the run; what comes out is what each later position
        would hold before its own truncation -- what the shared basis must also fit.
        """
        from .structure import shared_connection

        n_pos = len(self.dims)
        covs, xs, c = [], signals, position
        while shared_connection(c, n_pos, self.share):
            with self.clock("forward"):
                xs = [self.original_step(c, x, kw) for x, kw in zip(xs, self.kws)]
            covs.append(self.moment(xs, c + 1, f"position {c + 1} (look-ahead)"))
            c += 1
        return covs

    def original_step(self, c: int, x: torch.Tensor, kw: dict) -> torch.Tensor:
        """The unsliced model's computation from residual position c to c + 1 (centred for LayerNorm)."""
        a = self.adapter
        layer = a.layers(self.model)[c // 2 if a.layout == "sequential" else c]
        if next(layer.parameters()).device != self.device:
            import copy

            layer = copy.deepcopy(layer).to(self.device)
        attn, attn_norm, mlp, mlp_norm = layer_parts(a, layer)
        if a.layout == "sequential" and c % 2 == 0:
            out = attn(hidden_states=attn_norm(x), **kw)
            delta = out[0] if isinstance(out, tuple) else out
        elif a.layout == "sequential":
            normed = mlp_norm(x)
            if a.mlp_name:
                delta = mlp(normed)
            else:  # OPT: the MLP linears sit on the layer
                delta = getattr(layer, a.mlp_writer)(layer.activation_fn(getattr(layer, a.mlp_readers[0])(normed)))
        else:
            out = layer(x, **kw)
            delta = (out[0] if isinstance(out, tuple) else out) - x
        delta = delta.to(self.work_dtype)
        if self.centre:
            delta = delta - delta.mean(dim=-1, keepdim=True)
        return (x.to(self.work_dtype) + delta).to(self.dtype)

    def shared_basis(self, signals, position: int, what: str, q: torch.Tensor) -> torch.Tensor:
        """Record how much of ``position``'s second moment the run's basis q keeps; return q."""
        cov = self.moment(signals, position, what)
        e = _energies(cov, q)
        self.evr.append(explained_variance(e, self.dims[position]))
        self.eigvals.append(e.cpu().tolist())
        return q

    # -- weights -----------------------------------------------------------------------------
    def _w(self, t: torch.Tensor) -> torch.Tensor:
        cached = self._resident.get(id(t))
        if cached is not None and cached[0] is t:
            return cached[1]
        return t.detach().to(self.device)

    def load_layer(self, layer: nn.Module) -> None:
        """Copy one original layer's tensors to the compute device, once.

        The model may live in CPU RAM; without this, every calibration batch would copy the
        writers' weights again (``written``): 16 batches x 122 MB per LLaMA-2-7B layer.
        """
        self._resident = {}
        if all(p.device == self.device for p in layer.parameters()):
            return
        with self.clock("transfer"):
            params = list(layer.parameters())
            for p, copy in zip(params, to_device(params, self.device)):
                self._resident[id(p)] = (p, copy)

    def unload_layer(self) -> None:
        self._resident = {}
        self._framed_writers = {}

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

    def writer(self, linear: nn.Module, q: torch.Tensor, k: int, weight: torch.Tensor | None = None):
        """(Q^T M W)[:k, :] and (Q^T M b)[:k] for a module writing into the residual stream.

        ``weight`` replaces the module's weight (a refitted, neuron-pruned MLP writer, [d, m']).
        """
        qk = self.writer_basis(q, k)
        w = self._w(linear.weight) if weight is None else weight.to(self.device)
        with self.clock("rotate_slice"):
            new_w = rotate_slice(w, qk, k, dim=0, out_dtype=self.dtype, backend=self.backend)
        bias = None
        if linear.bias is not None:
            bias = (qk.T @ self._w(linear.bias).to(torch.float64)).to(self.dtype)
        return new_w, bias

    def shortcut(self, q_in: torch.Tensor, k_in: int, q_out: torch.Tensor, k_out: int) -> torch.Tensor:
        return (q_in[:, :k_in].T @ q_out[:, :k_out]).to(self.dtype)

    # -- signals -------------------------------------------------------------------------------
    # Framed signals (``self.framed``; see __init__ for where they are on): the full-width signal
    # after a block is formed in the coordinates of the basis q the block's input was sliced with,
    # y Q = [x, 0] + written(h) Q, instead of in the original coordinates. The skip connection's
    # map x Q_k^T then costs nothing (x padded with zeros); the writers' outputs enter the frame
    # through their weights, rotated once per layer ((M Q)^T W: [d, n], not a GEMM over every
    # token); the frame is undone where it matters, in the d x d second moment (Q C_Q Q^T, float64)
    # and in the next slicing ((Q^T Q')[:, :k']). Two of the four signal-sized maps per layer go.
    def to_full(self, x: torch.Tensor, q: torch.Tensor, k: int) -> torch.Tensor:
        """The skip connection's full-width signal: x Q[:, :k]^T, or [x, 0] in q's frame when framed."""
        if self.framed:
            if q is not self.frame:
                self.frame, self._framed_writers = q, {}
            return nn.functional.pad(x.to(self.work_dtype), (0, self.d - k))
        if self.split_signals:
            return self._rotate_signals(x, q[:, :k].T, self.d)
        return x.to(self.work_dtype) @ q[:, :k].T.to(self.work_dtype)

    def to_sliced(self, x_full: torch.Tensor, q: torch.Tensor, k: int) -> torch.Tensor:
        basis = self._slicing_basis(q, k)
        if self.split_signals:
            return self._rotate_signals(x_full, basis, k)
        with self.clock("forward"):
            return (x_full.to(self.work_dtype) @ basis.to(self.work_dtype)).to(self.dtype)

    def _slicing_basis(self, q: torch.Tensor, k: int) -> torch.Tensor:
        """Q[:, :k] in the current signals' frame (Q_frame^T Q[:, :k]); computed once per position."""
        if not self.framed or self.frame is None:
            return q[:, :k]
        cached = self._sliced_basis
        if cached is not None and cached[0] is q and cached[1] == k and cached[2] is self.frame:
            return cached[3]
        with self.clock("forward"):
            basis = self.frame.T @ q[:, :k]
        self._sliced_basis = (q, k, self.frame, basis)
        return basis

    def _rotate_signals(self, x: torch.Tensor, basis: torch.Tensor, k: int) -> torch.Tensor:
        """(x @ basis)[..., :k] rounded once to the model dtype, the basis kept to ~2^-22 (hi/lo split).

        Two accumulators (flush=False) in the Triton kernel: these maps feed second moments summed
        over every calibration token, where a drift of a few % of a half-ulp is noise, and they
        are the pipeline's largest GEMMs.
        """
        with self.clock("forward"):
            flat = rotate_slice(x.reshape(-1, x.shape[-1]), basis, k, dim=1, out_dtype=self.dtype,
                                backend=self.backend, flush=False)
        return flat.reshape(*x.shape[:-1], k)

    def written(self, h: torch.Tensor, linear: nn.Module, weight: torch.Tensor | None = None) -> torch.Tensor:
        """A writer's contribution to the signal, centred for LayerNorm models: in the original basis,
        or in the current frame when framed."""
        if self.framed:
            w, b = self._framed_writer(linear, weight)
            return nn.functional.linear(h, w, b)
        w = self._w(linear.weight) if weight is None else weight.to(self.device, h.dtype)
        out = nn.functional.linear(h, w, None if linear.bias is None else self._w(linear.bias)).to(self.work_dtype)
        if self.centre:
            out = out - out.mean(dim=-1, keepdim=True)
        return out

    def _framed_writer(self, linear: nn.Module, weight: torch.Tensor | None):
        """((M Q)^T W, (M Q)^T b) for the current frame Q, in the work dtype; once per layer and writer."""
        key = (id(linear), None if weight is None else id(weight))
        cached = self._framed_writers.get(key)
        if cached is not None:
            return cached[0], cached[1]
        basis = self.writer_basis(self.frame, self.d)  # centring folded in, as for the sliced writers
        w = self._w(linear.weight) if weight is None else weight.to(self.device, self.dtype)
        with self.clock("rotate_slice"):
            w_f = rotate_slice(w, basis, self.d, dim=0, out_dtype=self.work_dtype, backend=self.backend)
        b_f = None
        if linear.bias is not None:
            b_f = (basis.T @ self._w(linear.bias).to(torch.float64)).to(self.work_dtype)
        self._framed_writers[key] = (w_f, b_f, weight)  # weight kept alive: its id is in the key
        return w_f, b_f

    # -- MLP neurons ---------------------------------------------------------------------------
    def prune_mlp(self, i: int, readers: list[nn.Module], writer: nn.Module, hs: list[torch.Tensor]):
        """Keep ``self.inter[i]`` neurons of layer i's MLP; return (kept indices, refitted writer [d, m']).

        ``readers`` are the NEW (already rotated) reader modules, cut to the kept rows in place;
        ``hs`` the intermediate activations [B, T, m] on the calibration batches.
        """
        from .budget import gram_accumulate
        from .mlp_prune import prune_error, refit_writer, select_neurons

        m = hs[0].shape[-1]
        keep_n = m if self.inter is None else int(self.inter[i])
        if keep_n >= m:
            return None, None
        with self.clock("mlp_prune"):
            gram = torch.zeros(m, m, dtype=torch.float64, device=self.device)
            for h, mask in zip(hs, self.masks):
                gram_accumulate(h, mask, gram)
            w = self._w(writer.weight)
            # Blocks of 32 removals per OBS update: same error as one at a time (measured on SmolLM2:
            # equal to 4 digits) at a tenth of the time.
            keep = select_neurons(gram, w, keep_n, method=self.mlp_select, damp=self.damp, block=32)
            w_fit = refit_writer(gram, w, keep, self.damp)
            energy = float(((w.to(torch.float64) @ gram) * w.to(torch.float64)).sum())
            self.mlp_kept.append(1.0 - prune_error(gram, w, keep, w_fit) / max(energy, 1e-300))
            for lin in readers:
                b = None if lin.bias is None else lin.bias.detach()[keep].clone()
                _assign_linear(lin, lin.weight.detach()[keep].clone(), b)
        return keep, w_fit

    # -- tied head -----------------------------------------------------------------------------
    def tied_head(self, head: nn.Module, final_norm: nn.Module, emb_weight: torch.Tensor, q: torch.Tensor, k: int):
        """Tensors of a TiedHead: mix [k, k] (nn.Linear layout), bias [V] | None, mean_in [k], mean_out [V].

        logits = n Q_k^T diag(gamma) E^T (+ E beta) in the sliced basis, with E' = E (M) Q_k the
        tied tensor: mix = (Q_k^T diag(gamma) Q_k)^T ("gamma") or, with ``head_fit="lstsq"``, the
        least-squares mix that best reproduces the head's logits from the kept coordinates of the
        final normed stream (weighted by E^T E); both are exact at k = d.
        """
        gamma, beta, _ = norm_params(final_norm)
        qk = q[:, :k]
        g = torch.ones(self.d, dtype=torch.float64, device=self.device)
        if gamma is not None:
            g = gamma.detach().to(self.device, torch.float64)
        e = self._w(emb_weight).to(torch.float64)  # original embedding [V, d]
        mix = qk.T @ (g.unsqueeze(1) * qk)  # y = n_k @ mix
        if self.head_fit == "lstsq" and k < self.d and not self.centre and self.last_norm_cov is not None:
            c = _damped(self.last_norm_cov.to(self.device), self.damp)
            wgt = _damped(e.T @ e, self.damp)
            left = torch.linalg.solve(qk.T @ c @ qk, qk.T @ c)  # [k, d]
            right = torch.linalg.solve(qk.T @ wgt @ qk, qk.T @ wgt)  # [k, d]; right^T is [d, k]
            mix = left @ (g.unsqueeze(1) * right.T)
        bias = None
        hb = getattr(head, "bias", None)
        if hb is not None:
            bias = self._w(hb).to(torch.float64)
        if self.centre and beta is not None:
            eb = e @ beta.detach().to(self.device, torch.float64)
            bias = eb if bias is None else bias + eb
        mean_in = mean_out = None
        if self.centre:
            mean_in = (qk.T @ g / self.d).to(self.dtype)
            mean_out = e.sum(dim=1).to(self.dtype)
        return mix.T.contiguous().to(self.dtype), None if bias is None else bias.to(self.dtype), mean_in, mean_out


def unit_rms(x: torch.Tensor) -> torch.Tensor:
    """Every token scaled to unit RMS (what the next norm sees), so each counts once in the PCA."""
    xf = x.to(torch.promote_types(x.dtype, torch.float32))
    return xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-30)


def _damped(c: torch.Tensor, damp: float) -> torch.Tensor:
    return c + damp * c.diagonal().mean() * torch.eye(c.shape[0], dtype=c.dtype, device=c.device)


def _energies(cov: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Second moment along each column of q: diag(Q^T C Q) (the eigenvalues when q is C's own basis)."""
    return ((cov @ q) * q).sum(0).clamp_min(0)


def _assign_linear(module: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    module.weight = nn.Parameter(weight)
    module.in_features, module.out_features = weight.shape[1], weight.shape[0]
    if bias is not None:
        module.bias = nn.Parameter(bias)
    elif getattr(module, "bias", None) is not None:
        raise AssertionError("skeleton expects a bias the slicer did not produce")


def _validate(model: nn.Module, sparsity, round_to: int, rotation: str) -> Adapter:
    if getattr(getattr(model, "config", None), "slicekit", None):
        raise ValueError("this model is already sliced (config.slicekit is set); slice the original model instead")
    adapter = get_adapter(model)
    if sparsity is not None and (
        not isinstance(sparsity, (int, float)) or isinstance(sparsity, bool) or not (0.0 <= float(sparsity) < 1.0)
    ):
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


def is_tied(model: nn.Module, adapter: Adapter) -> bool:
    """Whether the model's head and token embedding are one tensor."""
    emb = adapter.embeddings(model)[0].weight
    head = adapter.lm_head(model).weight
    return head is emb or (head.data_ptr() == emb.data_ptr() and head.shape == emb.shape)


def _resolve_options(model, adapter, tie_embeddings, slice_head, mlp_sparsity, intermediate_sizes, target_params,
                     budget, tied_basis, head_fit, mlp_select):
    tied_now = is_tied(model, adapter)
    if tie_embeddings is None:
        # Keep a tied model tied -- unless the caller asked for a full-width head, which only an
        # untied head can have (the embedding is sliced).
        tied = tied_now and slice_head is not False
    elif tie_embeddings and not tied_now:
        raise ValueError("tie_embeddings=True but the model's head and embedding are different tensors; "
                         "only a tied model can stay tied")
    else:
        tied = bool(tie_embeddings)
    if tied and slice_head is False:
        raise ValueError("a tied head is sliced with the embedding (one tensor); pass tie_embeddings=False to keep "
                         "the head at full width")
    # The head's input width follows the last position: slicing it always lowers the count.
    slice_head = True if slice_head is None else bool(slice_head)
    from .budget import BUDGETS

    if budget not in BUDGETS:
        raise ValueError(f"budget must be one of {BUDGETS}, got {budget!r}")
    if budget == "mlp" and (target_params is None or mlp_sparsity not in (0, 0.0, "auto")
                            or intermediate_sizes is not None):
        raise ValueError("budget='mlp' chooses the MLP widths to meet target_params: it needs target_params and "
                         "no intermediate_sizes; mlp_sparsity may only be 'auto' (per-layer widths)")
    if tied_basis not in TIED_BASES:
        raise ValueError(f"tied_basis must be one of {TIED_BASES}, got {tied_basis!r}")
    if head_fit not in HEAD_FITS:
        raise ValueError(f"head_fit must be one of {HEAD_FITS}, got {head_fit!r}")
    if mlp_select not in MLP_SELECTIONS:
        raise ValueError(f"mlp_select must be one of {MLP_SELECTIONS}, got {mlp_select!r}")
    if target_params is not None and (not isinstance(target_params, int) or isinstance(target_params, bool)
                                      or target_params < 1):
        raise ValueError(f"target_params must be a positive integer, got {target_params!r}")
    if mlp_sparsity == "auto":
        if target_params is None or budget == "uniform":
            raise ValueError("mlp_sparsity='auto' lets the width budget choose MLP widths: it needs target_params "
                             "and budget='evr' or 'sensitivity'")
    elif (not isinstance(mlp_sparsity, (int, float)) or isinstance(mlp_sparsity, bool)
          or not 0.0 <= float(mlp_sparsity) < 1.0):
        raise ValueError(f"mlp_sparsity must be a number in [0, 1) or 'auto', got {mlp_sparsity!r}")
    if intermediate_sizes is not None and mlp_sparsity not in (0, 0.0):
        raise ValueError("give either intermediate_sizes or mlp_sparsity, not both")
    return tied, slice_head


def _plan(model, adapter, d, n_pos, *, sparsity, dims, round_to, slice_head, tied, target_params, budget,
          mlp_sparsity, intermediate_sizes, stats, sensitivity, damp, share_basis=1):
    """Residual widths and MLP widths from the options (see ``slice_model``)."""
    from .budget import ParamModel, allocate, mlp_groups, residual_groups

    full_inter = [getattr(layer_parts(adapter, layer)[2], adapter.mlp_writer).in_features
                  for layer in adapter.layers(model)]
    inter = None
    if intermediate_sizes is not None:
        inter = [int(m) for m in intermediate_sizes]
        if len(inter) != len(full_inter) or not all(1 <= m <= f for m, f in zip(inter, full_inter)):
            raise ValueError(
                f"intermediate_sizes must list {len(full_inter)} sizes in [1, intermediate size], got {inter}"
            )
    elif mlp_sparsity not in ("auto", 0, 0.0):
        inter = [sliced_width(f, float(mlp_sparsity), round_to) for f in full_inter]
    if inter is not None and inter == full_inter:
        inter = None
    pm = ParamModel(model, adapter, tied, share_basis)

    if dims is not None:
        dims = [int(k) for k in dims]
        if len(dims) != n_pos or not all(1 <= k <= d for k in dims):
            raise ValueError(f"dims must list {n_pos} widths in [1, {d}], got {dims}")
        if tied and dims[0] != dims[-1]:
            raise ValueError(f"tied embeddings share one tensor: dims[0] ({dims[0]}) must equal dims[-1] ({dims[-1]})")
        return dims, inter, pm
    if target_params is None:
        if sparsity is None:
            raise ValueError("give sparsity, dims or target_params")
        dims = uniform_dims(adapter, len(adapter.layers(model)), d, float(sparsity), round_to, slice_head or tied)
        return dims, inter, pm

    if budget == "mlp" and mlp_sparsity == "auto":
        # Residual stream untouched; per-layer MLP widths, greedily by OBS refit error per parameter.
        groups = mlp_groups(stats, model, adapter, round_to, damp=damp)
        dims, auto_inter = allocate(pm, groups, target_params, n_pos, d)
        return dims, (None if auto_inter == full_inter else auto_inter), pm
    if budget == "mlp":
        # Residual stream untouched; the widest uniform MLP width (multiple of round_to) that fits.
        dims = [d] * n_pos
        for m in range(max(full_inter) // round_to * round_to, 0, -round_to):
            cand = [min(m, f) for f in full_inter]
            if pm.count(dims, cand) <= target_params:
                return dims, cand, pm
        raise ValueError(f"cannot reach {target_params:,} parameters by MLP width alone (the residual stream stays "
                         f"at full width with budget='mlp'); use budget='uniform' (optionally with mlp_sparsity)")
    if budget == "uniform":
        # The widest uniform width (multiple of round_to) that meets the target.
        for k in range(d - d % round_to if d % round_to else d, 0, -round_to):
            cand = [k] * n_pos
            if not (slice_head or tied):
                cand[-1] = d
            if pm.count(cand, inter) <= target_params:
                return cand, inter, pm
        raise ValueError(f"cannot reach {target_params:,} parameters with uniform widths")
    weights = floors = None
    if budget == "sensitivity":
        weights = {k: v["weight"] for k, v in sensitivity["groups"].items()}
        floors = {k: v["width"] for k, v in sensitivity["groups"].items()}
    groups = residual_groups(stats, n_pos, d, round_to, tied, slice_head or tied, weights=weights, damp=damp,
                             share_basis=share_basis, min_width=floors)
    if mlp_sparsity == "auto":
        groups += mlp_groups(stats, model, adapter, round_to, weights=weights, damp=damp, min_width=floors)
    dims, auto_inter = allocate(pm, groups, target_params, n_pos, d)
    if auto_inter is not None:
        inter = None if auto_inter == full_inter else auto_inter
    return dims, inter, pm


@torch.no_grad()
def slice_model(
    model: nn.Module,
    calibration,
    *,
    sparsity: float | None = None,
    round_to: int = 8,
    slice_head: bool | None = None,
    dims: list[int] | None = None,
    tie_embeddings: bool | None = None,
    target_params: int | None = None,
    budget: str = "uniform",
    mlp_sparsity: float | str = 0.0,
    intermediate_sizes: list[int] | None = None,
    tied_basis: str = "dense",
    head_fit: str = "gamma",
    mlp_select: str = "obs",
    normalize_tokens: bool = False,
    share_basis: int = 1,
    statistics=None,
    sensitivity_windows: int = 4,
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
        sparsity: fraction of the residual width to remove at every position, in [0, 1) (ignored
            when ``dims`` or ``target_params`` is given).
        round_to: kept widths (residual and MLP) are multiples of this (8 minimum for tensor cores).
        slice_head: slice the final residual position (the head's input). None (default): yes --
            the head's input width then follows the last position, which always lowers the count.
            A tied head is always sliced with the embedding.
        dims: explicit width per residual position (overrides sparsity/target_params).
        tie_embeddings: keep a tied embedding and head as ONE tensor (None: keep tied iff the model
            is tied and ``slice_head`` is not False). The first and last positions then share one
            basis, the eigenbasis of C_0/tr(C_0) + C_L/tr(C_L), and the final norm's gamma becomes a
            k x k matrix in the head.
            False unties (the embedding gets Q_0, the head its own Q_L: V x d more parameters).
        target_params: total parameter count to meet (everything counted: embeddings, head,
            shortcut matrices); the widths are chosen by ``budget``.
        budget: "uniform" (one width everywhere), "evr" (greedy on discarded eigenvalue mass per
            parameter saved), "sensitivity" (the same mass weighted by each position's measured
            held-out loss sensitivity), see ``slicekit.budget``; or "mlp": residual stream kept at
            full width (one shared basis, no shortcut matrices) and one MLP width for every layer,
            the widest that meets ``target_params`` (the best size/quality trade-off measured on
            SmolLM2-135M, README); with ``mlp_sparsity="auto"`` the MLP widths differ per layer,
            chosen greedily by OBS refit error per parameter.
        mlp_sparsity: fraction of every MLP's neurons to remove (whole neurons, writer refitted by
            least squares), or "auto": the budget chooses every layer's MLP width.
        intermediate_sizes: explicit MLP width per layer (instead of mlp_sparsity).
        tied_basis: where C_L comes from for the shared first/last basis: "dense" (the unsliced
            model's last position, one extra forward) or "two_pass" (slice once, measure C_L on
            that sliced model, slice again).
        head_fit: tied head mixing matrix: "gamma" (Q_k^T diag(gamma) Q_k) or "lstsq".
        mlp_select: neuron choice: "obs" (greedy Optimal Brain Surgeon) or "energy".
        normalize_tokens: scale every token to unit RMS before the PCA, so each token counts once
            (the readers see the normed stream) instead of in proportion to its squared norm.
        share_basis: runs of this many consecutive residual positions share one basis and one
            width (2: each layer's input and middle position), so the skip connections inside a run
            need no k x k matrix. The shared basis fits every position of the run (the later ones
            predicted by running the original blocks on the sliced prefix's signals).
        statistics: precomputed ``slicekit.budget.Statistics`` of this model and calibration
            (reused across calls; computed when needed otherwise).
        sensitivity_windows: calibration rows held out for ``budget="sensitivity"`` loss measurements.
        batch_size: calibration rows per forward.
        device: where the layer-wise computation runs (default: the model's device). With
            ``device="cuda"`` and a model in CPU memory, one layer at a time visits the GPU.
        backend: op backend for the covariance and rotate-and-slice ops (None: automatic).
        rotation: "pca" (SliceGPT), or "random"/"identity" (exact-invariance checks).
        damp: eigh damping as a fraction of mean(diag C).
        seed: seed for ``rotation="random"``.
        progress: show a progress bar per layer.

    Returns:
        (sliced, report): ``sliced`` is a new model of the same class (norms parameter-free,
        ``config.slicekit`` set); ``report`` is a :class:`SliceReport`.
    """
    t_start = time.perf_counter()
    adapter = _validate(model, sparsity, round_to, rotation)
    tied, slice_head = _resolve_options(model, adapter, tie_embeddings, slice_head, mlp_sparsity, intermediate_sizes,
                                        target_params, budget, tied_basis, head_fit, mlp_select)
    if not isinstance(share_basis, int) or isinstance(share_basis, bool) or share_basis < 1:
        raise ValueError(f"share_basis must be a positive integer, got {share_basis!r}")
    cfg = model.config
    d = cfg.hidden_size
    layers = adapter.layers(model)
    n_pos = adapter.num_positions(len(layers))
    if budget == "mlp":
        if dims is not None:
            raise ValueError("budget='mlp' keeps every residual width at the hidden size: do not pass dims")
        # One full-width basis for every position: no shortcut matrices anywhere (measured on SmolLM2:
        # at equal size, MLP neurons are far cheaper to remove than residual width; README).
        share_basis = n_pos
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
    clock = _Clock(device)

    if target_params is not None and dims is None:
        from .budget import ParamModel

        full_inter = None if intermediate_sizes is None else list(intermediate_sizes)
        if ParamModel(model, adapter, tied, share_basis).count([d] * n_pos, full_inter) <= target_params:
            budget = "uniform"  # nothing to allocate: every width stays full
    needs_stats = (tied and rotation == "pca") or (target_params is not None and budget != "uniform"
                                                   and (budget != "mlp" or mlp_sparsity == "auto"))
    stats = statistics
    if stats is not None and bool(getattr(stats, "normalize_tokens", False)) != bool(normalize_tokens):
        raise ValueError("the statistics passed in were collected with a different normalize_tokens setting")
    sensitivity = None
    try:
        if needs_stats and (stats is None or (mlp_sparsity == "auto" and stats.mlp_grams is None)):
            from .budget import collect_statistics

            with clock("statistics"):
                stats = collect_statistics(model, adapter, batches, mlp=mlp_sparsity == "auto", backend=backend,
                                           normalize_tokens=normalize_tokens)
        if target_params is not None and budget == "sensitivity":
            # Cached on the statistics object: a sweep over sizes measures once.
            mlp_probe = 0.5 if mlp_sparsity == "auto" else None
            key = (tied, bool(slice_head or tied), mlp_probe, round_to, sensitivity_windows, damp, share_basis)
            if stats.sensitivity is None:
                stats.sensitivity = {}
            sensitivity = stats.sensitivity.get(key)
            if sensitivity is None:
                from .budget import measure_sensitivity

                held = torch.cat([b.input_ids for b in batches])[-sensitivity_windows:]
                with clock("sensitivity"):
                    sensitivity = measure_sensitivity(
                        model, adapter, stats, held, tied=tied, slice_last=slice_head or tied, damp=damp,
                        mlp_probe=mlp_probe, round_to=round_to, progress=progress, share_basis=share_basis,
                    )
                stats.sensitivity[key] = sensitivity
        dims, inter, pm = _plan(
            model, adapter, d, n_pos, sparsity=sparsity, dims=dims, round_to=round_to, slice_head=slice_head, tied=tied,
            target_params=target_params, budget=budget, mlp_sparsity=mlp_sparsity,
            intermediate_sizes=intermediate_sizes,
            stats=stats, sensitivity=sensitivity, damp=damp, share_basis=share_basis,
        )
        slice_head = dims[-1] < d or tied
        meta = dict(sparsity=float(sparsity) if sparsity is not None else 1.0 - sum(dims) / (len(dims) * d),
                    round_to=round_to, slice_head=bool(slice_head), rotation=rotation, damp=damp, tied=tied,
                    normalize_tokens=normalize_tokens, share_basis=share_basis,
                    intermediate_sizes=inter, budget=budget if target_params is not None else "uniform")
        partner = None
        if tied and rotation == "pca":
            partner = stats.covariances[-1]
        passes = 2 if (tied and rotation == "pca" and tied_basis == "two_pass") else 1
        for _ in range(passes):
            sliced, s = _run(model, adapter, batches, dims, inter, meta, device, model_device, backend, rotation, damp,
                             seed, progress, tied, partner, head_fit, mlp_select, normalize_tokens, share_basis)
            partner = s.last_cov
    finally:
        model.train(was_training)

    for stage, sec in clock.totals.items():
        s.clock.totals[stage] = s.clock.totals.get(stage, 0.0) + sec
    report = SliceReport.build(
        model=model, sliced=sliced, adapter=adapter, dims=dims, evr=s.evr, n_tokens=n_tokens,
        n_sequences=sum(b.input_ids.shape[0] for b in batches), stage_seconds=s.clock.totals,
        total_seconds=time.perf_counter() - t_start, device=device, meta=meta,
        backend=backend, eigvals=s.eigvals,
    )
    report.extra.update(
        tied_embeddings=tied, intermediate_sizes=inter, budget=meta["budget"], target_params=target_params,
        tied_basis=tied_basis if tied else None, head_fit=head_fit if tied else None,
        mlp_kept_energy=s.mlp_kept or None, params_predicted=pm.count(dims, inter),
        sensitivity=sensitivity,
    )
    return sliced, report


def _run(model, adapter, batches, dims, inter, meta, device, model_device, backend, rotation, damp, seed, progress,
         tied, partner, head_fit, mlp_select, normalize_tokens, share_basis=1):
    """One layer-wise pass: build the sliced model for fixed widths. Returns (sliced, slicer state)."""
    d = model.config.hidden_size
    layers = adapter.layers(model)
    sliced = sliced_skeleton(model, adapter, dims, meta)
    s = _Slicer(model, adapter, batches, dims, device, backend, rotation, damp, seed, progress,
                tied=tied, intermediate_sizes=inter, head_fit=head_fit, mlp_select=mlp_select,
                normalize_tokens=normalize_tokens, share_basis=share_basis)
    try:
        with s.clock("forward"):
            xs, kws = capture_first_layer_inputs(model, layers, batches, device)
            if s.centre:
                xs = [(x.to(s.work_dtype) - x.to(s.work_dtype).mean(-1, keepdim=True)).to(s.dtype) for x in xs]
        s.kws = kws
        q = s.basis(xs, 0, "embeddings", partners=[partner])
        if tied:
            s.q_shared = q
        for emb_new, emb in zip(adapter.embeddings(sliced), adapter.embeddings(model)):
            qk = s.writer_basis(q, dims[0])  # embeddings write the stream: centre them like writers
            with s.clock("rotate_slice"):
                w = rotate_slice(s._w(emb.weight), qk, dims[0], dim=1, out_dtype=s.dtype, backend=backend)
            emb_new.weight = nn.Parameter(move([w], model_device)[0])
        tie_head(sliced, adapter)
        xs = [s.to_sliced(x, q, dims[0]) for x in xs]

        bar = _progress(len(layers), progress, f"slicing {adapter.name} ({d} -> {min(dims)}..{max(dims)})")
        for i, layer in enumerate(layers):
            new_layer: SlicedDecoderLayer = adapter.layers(sliced)[i]
            s.load_layer(layer)
            try:
                xs, q = _slice_layer(s, i, layer, new_layer, xs, kws, q)
            finally:
                s.unload_layer()
            # In line, deliberately: one layer's weights on the GPU at a time (prefetching the next
            # layer would make it two), and overlapping pageable copies with the compute (a worker
            # thread on a side stream) was measured to gain nothing -- see README, slicing pipeline.
            with s.clock("transfer"):
                move_module(new_layer, model_device)
            bar.update(1)
        bar.close()

        final_norm = adapter.final_norm(model)
        if tied:
            mix, bias, mean_in, mean_out = s.tied_head(adapter.lm_head(model), final_norm,
                                                       adapter.embeddings(model)[0].weight, q, dims[-1])
            head: TiedHead = sliced.lm_head
            head.mix = nn.Parameter(move([mix], model_device)[0])
            for name, t in (("bias", bias), ("mean_in", mean_in), ("mean_out", mean_out)):
                if t is not None:
                    setattr(head, name, nn.Parameter(move([t], model_device)[0]))
        else:
            # The head reads the final normed stream: gamma (and beta) fold into it like any reader.
            w, b = s.reader(adapter.lm_head(model), final_norm, q, dims[-1])
            b = None if b is None else move([b], model_device)[0]
            _assign_linear(sliced.lm_head, move([w], model_device)[0], b)
        del xs
    except BaseException:
        del sliced
        raise

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
    return sliced, s


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
        with s.clock("forward"):
            normed = [new.attn_norm(x) for x in xs]
            inters = [new.mlp(n) for n in normed]
        keep, w_fit = s.prune_mlp(i, mlp_new_readers, mlp_writer, inters)
        if keep is not None:
            inters = [h[..., keep] for h in inters]
        full = []
        with s.clock("forward"):
            for x, n, h, kw in zip(xs, normed, inters, kws):
                heads = new.self_attn(hidden_states=n, **kw)[0]
                y = s.to_full(x, q_in, k_in) + s.written(heads, attn_writer) + s.written(h, mlp_writer, w_fit)
                full.append(y.to(s.dtype))
        del normed, inters
        pos_out = i + 1
        q_out, shared = _position_basis(s, full, pos_out, f"output of layer {i}", q_in)
        w, b = s.writer(attn_writer, q_out, k_out)
        _assign_linear(new.attn_out, w, b)
        w, b = s.writer(mlp_writer, q_out, k_out, weight=w_fit)
        _assign_linear(new.mlp_out, w, b)
        if not shared:
            new.attn_shortcut = nn.Parameter(s.shortcut(q_in, k_in, q_out, k_out))
        return [s.to_sliced(f, q_out, k_out) for f in full], q_out

    # Sequential: attention block, then the MLP block, each with its own residual position.
    mids = []
    with s.clock("forward"):
        for x, kw in zip(xs, kws):
            heads = new.attention(x, **kw)
            mids.append((s.to_full(x, q_in, k_in) + s.written(heads, attn_writer)).to(s.dtype))
    q_mid, shared = _position_basis(s, mids, 2 * i + 1, f"layer {i} after attention", q_in)
    w, b = s.writer(attn_writer, q_mid, k_mid)
    _assign_linear(new.attn_out, w, b)
    if not shared:
        new.attn_shortcut = nn.Parameter(s.shortcut(q_in, k_in, q_mid, k_mid))
    mids = [s.to_sliced(m, q_mid, k_mid) for m in mids]

    for name, target in zip(a.mlp_readers, mlp_new_readers):
        w, b = s.reader(getattr(mlp, name), mlp_norm, q_mid, k_mid)
        _assign_linear(target, w, b)
    with s.clock("forward"):
        inters = [new.mlp(new.mlp_norm(x)) for x in mids]
    keep, w_fit = s.prune_mlp(i, mlp_new_readers, mlp_writer, inters)
    if keep is not None:
        inters = [h[..., keep] for h in inters]
    outs = []
    with s.clock("forward"):
        for x, h in zip(mids, inters):
            outs.append((s.to_full(x, q_mid, k_mid) + s.written(h, mlp_writer, w_fit)).to(s.dtype))
    del inters
    pos_out = 2 * i + 2
    q_out, shared = _position_basis(s, outs, pos_out, f"output of layer {i}", q_mid)
    w, b = s.writer(mlp_writer, q_out, k_out, weight=w_fit)
    _assign_linear(new.mlp_out, w, b)
    if not shared:
        new.mlp_shortcut = nn.Parameter(s.shortcut(q_mid, k_mid, q_out, k_out))
    return [s.to_sliced(o, q_out, k_out) for o in outs], q_out


def _move_real(module: nn.Module, device: torch.device) -> None:
    """Module.to(device) that leaves meta tensors (still to be computed) where they are."""
    module._apply(lambda t: t if t.is_meta else t.to(device))


def _position_basis(s: _Slicer, signals, position: int, what: str, q_prev: torch.Tensor):
    """(basis, shared): the run's basis when ``position`` continues a shared run, else a new one."""
    from .structure import shared_connection

    if shared_connection(position - 1, len(s.dims), s.share):
        return s.shared_basis(signals, position, what, q_prev), True
    return _next_basis(s, signals, position, what), False


def _next_basis(s: _Slicer, signals, position: int, what: str) -> torch.Tensor:
    last = position == len(s.dims) - 1
    if last and s.tied:
        # The head reads the embedding tensor: the last position must use the first position's basis.
        # Its own second moment is still measured: for the report, a second pass, and the head fit.
        cov = s.moment(signals, position, what)
        s.last_cov = cov
        e = _energies(cov, s.q_shared)
        s.evr.append(explained_variance(e, s.dims[position]))
        s.eigvals.append(e.cpu().tolist())
        if s.head_fit == "lstsq":
            s.last_norm_cov = s.moment([_rms_normed(x, s.d) for x in signals], position, what)
        return s.q_shared
    if last and s.dims[-1] == s.d and s.rotation == "pca":
        # Unsliced head: keep the original basis (Q_L = I) -- exact, and the head is left as is.
        s.basis(signals, position, what)  # still measured, for the report
        return torch.eye(s.d, dtype=torch.float64, device=s.device)
    return s.basis(signals, position, what)


def _rms_normed(x: torch.Tensor, d: int) -> torch.Tensor:
    xf = x.to(torch.promote_types(x.dtype, torch.float32))
    return xf * torch.rsqrt(xf.pow(2).sum(-1, keepdim=True) / d + 1e-12)


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
