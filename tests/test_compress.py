"""Real compression of small models: tied embeddings, sliced head, width budget, MLP neurons.

Every option must be exact at zero compression (float64 logits equal to rounding) on the random
tiny architectures, must count its parameters exactly, and must survive save/load/generate.
"""
import pytest
import torch

import slicekit
import slicekit.slicing
import slicekit.structure
from slicekit.budget import ParamModel, collect_statistics
from slicekit.calibration import make_batches
from slicekit.mlp_prune import obs_order, refit_writer, select_neurons
from slicekit.modules import TiedHead
from slicekit.pca import random_orthogonal
from tiny_models import ARCHS, calib_ids, rel, tiny_model

TOL = 1e-10
TIED = ("llama_tied", "opt")


def _n_pos(model):
    return slicekit.get_adapter(model).num_positions(model.config.num_hidden_layers)


# -- exact at zero compression ---------------------------------------------------------------------
@pytest.mark.parametrize("rotation", ["pca", "random"])
@pytest.mark.parametrize("head_fit", ["gamma", "lstsq"])
def test_tied_full_width_is_exact(rotation, head_fit):
    for arch in TIED:
        model = tiny_model(arch)
        ids = calib_ids()
        with torch.no_grad():
            ref = model(ids).logits
        sliced, report = slicekit.slice_model(model, ids, sparsity=0.0, rotation=rotation, head_fit=head_fit,
                                              progress=False)
        assert isinstance(sliced.lm_head, TiedHead)
        assert sliced.lm_head.weight is slicekit.get_adapter(sliced).embeddings(sliced)[0].weight
        assert not report.tied_embeddings_untied
        with torch.no_grad():
            assert rel(sliced(ids).logits, ref) < TOL, arch


def test_tied_two_pass_full_width_is_exact():
    model = tiny_model("llama_tied")
    ids = calib_ids()
    with torch.no_grad():
        ref = model(ids).logits
    sliced, _ = slicekit.slice_model(model, ids, sparsity=0.0, tied_basis="two_pass", progress=False)
    with torch.no_grad():
        assert rel(sliced(ids).logits, ref) < TOL


@pytest.mark.parametrize("budget", ["uniform", "evr", "sensitivity"])
def test_budget_at_full_size_is_exact(arch_model, budget):
    """A target at (or above) the dense size keeps every width: the model is reproduced exactly."""
    arch, model, ids, ref = arch_model
    target = slicekit.count_parameters(model) + 10**6
    sliced, report = slicekit.slice_model(model, ids, target_params=target, budget=budget,
                                          sensitivity_windows=2, progress=False)
    assert all(k == model.config.hidden_size for k in report.dims)
    with torch.no_grad():
        assert rel(sliced(ids).logits, ref) < TOL


def test_mlp_option_at_zero_is_exact(arch_model):
    arch, model, ids, ref = arch_model
    full = [96] * model.config.num_hidden_layers
    sliced, report = slicekit.slice_model(model, ids, sparsity=0.0, intermediate_sizes=full, progress=False)
    with torch.no_grad():
        assert rel(sliced(ids).logits, ref) < TOL


def _duplicate_neurons(model, n_dup: int):
    """Make the last n_dup neurons of every MLP copies of the first n_dup: removable without error."""
    adapter = slicekit.get_adapter(model)
    with torch.no_grad():
        for layer in adapter.layers(model):
            mlp = getattr(layer, adapter.mlp_name) if adapter.mlp_name else layer
            m = getattr(mlp, adapter.mlp_writer).in_features
            for name in adapter.mlp_readers:
                lin = getattr(mlp, name)
                lin.weight[m - n_dup :] = lin.weight[:n_dup]
                if lin.bias is not None:
                    lin.bias[m - n_dup :] = lin.bias[:n_dup]
    return model


@pytest.mark.parametrize("arch", ["llama", "opt", "phi"])
def test_pruning_redundant_neurons_is_exact(arch):
    """Duplicated neurons are the ones removed, and the least-squares refit absorbs them exactly."""
    model = _duplicate_neurons(tiny_model(arch), 16)
    ids = calib_ids(n=16)
    with torch.no_grad():
        ref = model(ids).logits
    sliced, report = slicekit.slice_model(model, ids, sparsity=0.0, intermediate_sizes=[80, 80], damp=1e-10,
                                          progress=False)
    assert report.extra["intermediate_sizes"] == [80, 80]
    layer = slicekit.get_adapter(sliced).layers(sliced)[0]
    assert layer.mlp_out.weight.shape[1] == 80
    with torch.no_grad():
        assert rel(sliced(ids).logits, ref) < 1e-7


@pytest.mark.parametrize("share", [2, 3])
@pytest.mark.parametrize("rotation", ["pca", "random"])
def test_shared_bases_full_width_is_exact(arch_model, share, rotation):
    """Runs of positions sharing one basis: identity skip connections, still exact at full width."""
    arch, model, ids, ref = arch_model
    sliced, report = slicekit.slice_model(model, ids, sparsity=0.0, share_basis=share, rotation=rotation,
                                          progress=False)
    layers = slicekit.get_adapter(sliced).layers(sliced)
    n_shortcuts = sum((l.attn_shortcut is not None) + (l.mlp_shortcut is not None) for l in layers)
    n_conn = len(report.dims) - 1
    shared = sum(slicekit.structure.shared_connection(c, n_conn + 1, share) for c in range(n_conn))
    assert n_shortcuts == n_conn - shared
    assert n_shortcuts < n_conn
    assert len(report.explained_variance) == len(report.dims)
    with torch.no_grad():
        assert rel(sliced(ids).logits, ref) < TOL, (arch, share, rotation)


# -- tied structure ---------------------------------------------------------------------------------
def test_tied_shared_subspace_is_exact_when_sliced():
    """Everything confined to a 40-dim subspace: slicing a tied model to 40 loses nothing.

    Exercises the shared first/last basis and the k x k head mix at k < d.
    """
    model = tiny_model("llama_tied")
    d, k = 64, 40
    basis = random_orthogonal(d, torch.Generator().manual_seed(3))[:, :k]
    proj = basis @ basis.T
    with torch.no_grad():
        base = model.model
        base.embed_tokens.weight.copy_(base.embed_tokens.weight @ proj)  # also the (tied) head
        for layer in base.layers:
            for lin in (layer.self_attn.o_proj, layer.mlp.down_proj):
                lin.weight.copy_(proj @ lin.weight)
    ids = calib_ids(n=16)
    with torch.no_grad():
        ref = model(ids).logits
    for head_fit in ("gamma", "lstsq"):
        sliced, report = slicekit.slice_model(model, ids, sparsity=1 - k / d, head_fit=head_fit, progress=False)
        assert report.dims == [k] * 5
        with torch.no_grad():
            assert rel(sliced(ids).logits, ref) < 1e-9, head_fit


@pytest.mark.parametrize("arch", TIED)
def test_tied_model_shrinks(arch):
    model = tiny_model(arch, dtype=torch.float32)
    tied, rep_t = slicekit.slice_model(model, calib_ids(), sparsity=0.25, progress=False)
    untied, rep_u = slicekit.slice_model(model, calib_ids(), sparsity=0.25, tie_embeddings=False, progress=False)
    assert rep_t.params_after < rep_u.params_after
    assert rep_u.tied_embeddings_untied and not rep_t.tied_embeddings_untied
    assert rep_t.dims[0] == rep_t.dims[-1] < 64
    emb = slicekit.get_adapter(tied).embeddings(tied)[0].weight
    assert tied.lm_head.weight is emb
    assert rep_t.params_after == slicekit.count_parameters(tied) == sum(p.numel() for p in tied.parameters())


def test_full_width_head_unties():
    """slice_head=False (the old default) on a tied model: the head stays full width, so it is untied."""
    model = tiny_model("llama_tied", dtype=torch.float32)
    sliced, report = slicekit.slice_model(model, calib_ids(), sparsity=0.25, slice_head=False, progress=False)
    assert report.tied_embeddings_untied and report.dims[-1] == 64 and report.dims[0] < 64
    assert not isinstance(sliced.lm_head, TiedHead)


def test_tie_option_errors():
    with pytest.raises(ValueError, match="only a tied model"):
        slicekit.slice_model(tiny_model("llama", dtype=torch.float32), calib_ids(), sparsity=0.2, tie_embeddings=True)
    with pytest.raises(ValueError, match="tied head is sliced"):
        slicekit.slice_model(tiny_model("llama_tied", dtype=torch.float32), calib_ids(), sparsity=0.2,
                             slice_head=False, tie_embeddings=True)
    with pytest.raises(ValueError, match="dims\\[0\\]"):
        slicekit.slice_model(tiny_model("llama_tied", dtype=torch.float32), calib_ids(), dims=[64, 56, 56, 56, 48])
    with pytest.raises(ValueError, match="auto"):
        slicekit.slice_model(tiny_model("llama", dtype=torch.float32), calib_ids(), sparsity=0.2, mlp_sparsity="auto")
    with pytest.raises(ValueError, match="sparsity, dims or target_params"):
        slicekit.slice_model(tiny_model("llama", dtype=torch.float32), calib_ids(), progress=False)
    with pytest.raises(ValueError, match="share_basis"):
        slicekit.slice_model(tiny_model("llama", dtype=torch.float32), calib_ids(), sparsity=0.2, share_basis=0)
    with pytest.raises(ValueError, match="share a basis"):
        slicekit.slice_model(tiny_model("llama", dtype=torch.float32), calib_ids(), dims=[64, 56, 56, 56, 56],
                             share_basis=2, progress=False)


# -- parameter model ---------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHS)
def test_param_model_matches_real_count(arch):
    model = tiny_model(arch, dtype=torch.float32)
    adapter = slicekit.get_adapter(model)
    g = torch.Generator().manual_seed(0)
    n_pos = _n_pos(model)
    for tie, share in ([(None, 1), (False, 2)] if arch in TIED else [(None, 1), (None, 2)]):
        dims = (torch.randint(1, 9, (n_pos,), generator=g) * 8).tolist()
        tied = arch in TIED and tie is None
        for c in range(n_pos - 1):
            if slicekit.structure.shared_connection(c, n_pos, share):
                dims[c + 1] = dims[c]
        if tied:
            dims[-1] = dims[0]
        inter = (torch.randint(1, 13, (2,), generator=g) * 8).tolist()
        sliced, report = slicekit.slice_model(model, calib_ids(), dims=dims, intermediate_sizes=inter,
                                              tie_embeddings=tie, share_basis=share, progress=False)
        predicted = ParamModel(model, adapter, tied, share).count(dims, inter)
        assert predicted == report.params_after == slicekit.count_parameters(sliced), (arch, tie, share)
        assert report.extra["params_predicted"] == predicted
        assert sum(report.params_after_breakdown.values()) == report.params_after


# -- budget ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("budget", ["uniform", "evr", "sensitivity"])
@pytest.mark.parametrize("arch,share", [("llama_tied", 1), ("phi", 1), ("opt", 2)])
def test_budget_meets_target(arch, share, budget):
    model = tiny_model(arch, dtype=torch.float32)
    dense = slicekit.count_parameters(model)
    target = int(0.8 * dense)
    sliced, report = slicekit.slice_model(model, calib_ids(n=16), target_params=target, budget=budget, round_to=8,
                                          sensitivity_windows=2, share_basis=share, progress=False)
    assert report.params_after <= target
    assert all(k % 8 == 0 for k in report.dims)
    if budget != "uniform":
        # greedy stops at the first allocation under the target: it does not overshoot by much
        assert report.params_after > 0.85 * target
    else:
        assert len(set(report.dims)) == 1
    if budget == "sensitivity":
        assert report.extra["sensitivity"]["groups"]
    with torch.no_grad():
        assert torch.isfinite(sliced(calib_ids()).logits).all()


def test_budget_with_mlp_widths():
    model = tiny_model("llama_tied", dtype=torch.float32)
    target = int(0.7 * slicekit.count_parameters(model))
    sliced, report = slicekit.slice_model(model, calib_ids(n=16), target_params=target, budget="evr",
                                          mlp_sparsity="auto", progress=False)
    inter = report.extra["intermediate_sizes"]
    assert report.params_after <= target
    if inter is not None:
        assert all(m % 8 == 0 and 8 <= m <= 96 for m in inter)
        assert sliced.config.slicekit["intermediate_sizes"] == inter


@pytest.mark.parametrize("arch", ["llama_tied", "opt", "phi", "qwen2"])
def test_mlp_budget_keeps_residual_and_meets_target(arch):
    model = tiny_model(arch, dtype=torch.float32)
    dense = slicekit.count_parameters(model)
    target = int(0.85 * dense)
    sliced, report = slicekit.slice_model(model, calib_ids(n=16), target_params=target, budget="mlp", round_to=8,
                                          progress=False)
    d = model.config.hidden_size
    inter = report.extra["intermediate_sizes"]
    assert set(report.dims) == {d}
    assert report.params_after == slicekit.count_parameters(sliced) <= target
    assert len(set(inter)) == 1 and inter[0] % 8 == 0
    # the widest such width: 8 more neurons per layer would not fit
    pm = ParamModel(model, slicekit.get_adapter(model), slicekit.slicing.is_tied(model, slicekit.get_adapter(model)),
                    _n_pos(model))
    assert pm.count(report.dims, [m + 8 for m in inter]) > target
    # one shared basis: no shortcut matrix between layers; the connection into the head's input keeps
    # one d x d matrix (the last position is never part of a shared run)
    assert report.params_after_breakdown.get("shortcuts", 0) == d * d
    with torch.no_grad():
        assert torch.isfinite(sliced(calib_ids()).logits).all()


def test_mlp_budget_auto_widths():
    model = tiny_model("llama_tied", dtype=torch.float32)
    d = model.config.hidden_size
    target = int(0.85 * slicekit.count_parameters(model))
    sliced, report = slicekit.slice_model(model, calib_ids(n=16), target_params=target, budget="mlp",
                                          mlp_sparsity="auto", round_to=8, progress=False)
    inter = report.extra["intermediate_sizes"]
    assert set(report.dims) == {d}
    assert report.params_after == slicekit.count_parameters(sliced) <= target
    assert inter is not None and all(m % 8 == 0 and 8 <= m <= model.config.intermediate_size for m in inter)
    with torch.no_grad():
        assert torch.isfinite(sliced(calib_ids()).logits).all()


def test_mlp_budget_errors():
    model = tiny_model("llama_tied", dtype=torch.float32)
    with pytest.raises(ValueError, match="needs target_params"):
        slicekit.slice_model(model, calib_ids(n=16), sparsity=0.1, budget="mlp", progress=False)
    with pytest.raises(ValueError, match="needs target_params"):
        slicekit.slice_model(model, calib_ids(n=16), target_params=10**9, budget="mlp", mlp_sparsity=0.2,
                             progress=False)
    with pytest.raises(ValueError, match="needs target_params"):
        slicekit.slice_model(model, calib_ids(n=16), target_params=10**9, budget="mlp",
                             intermediate_sizes=[8, 8], progress=False)
    with pytest.raises(ValueError, match="MLP width alone"):
        slicekit.slice_model(model, calib_ids(n=16), target_params=1000, budget="mlp", progress=False)


def test_statistics_reused():
    """Statistics passed in give the same model as statistics computed inside."""
    model = tiny_model("llama_tied", dtype=torch.float64)
    ids = calib_ids()
    adapter = slicekit.get_adapter(model)
    stats = collect_statistics(model, adapter, make_batches(ids, 8, model.config.vocab_size))
    a, _ = slicekit.slice_model(model, ids, sparsity=0.25, progress=False)
    b, _ = slicekit.slice_model(model, ids, sparsity=0.25, statistics=stats, progress=False)
    with torch.no_grad():
        assert rel(a(ids).logits, b(ids).logits) < 1e-12


# -- MLP pruning primitives -------------------------------------------------------------------------
def test_refit_and_obs_errors_agree():
    g = torch.Generator().manual_seed(0)
    h = torch.randn(400, 24, generator=g, dtype=torch.float64) @ torch.randn(24, 24, generator=g, dtype=torch.float64)
    w = torch.randn(10, 24, generator=g, dtype=torch.float64)
    gram = h.T @ h
    order, err = obs_order(gram, w, 8, damp=0.0)
    keep = torch.tensor(sorted(set(range(24)) - set(order.tolist())))
    fit = refit_writer(gram, w, keep, damp=0.0)
    direct = float(((h @ w.T - h[:, keep] @ fit.T) ** 2).sum())
    assert abs(direct - float(err[-1])) < 1e-8 * max(1.0, direct)
    # least squares: no other writer on the kept neurons does better
    ls = torch.linalg.lstsq(h[:, keep], h @ w.T).solution.T
    assert torch.allclose(fit, ls, atol=1e-8)
    assert torch.equal(select_neurons(gram, w, 16, damp=0.0), keep)
    assert torch.allclose(refit_writer(gram, w, torch.arange(24)), w)


# -- save / load / generate ---------------------------------------------------------------------------
@pytest.mark.parametrize("arch,share", [("llama_tied", 2), ("opt", 1), ("phi", 2)])
def test_compressed_save_load_generate(arch, share, tmp_path):
    model = tiny_model(arch, dtype=torch.float32)
    ids = calib_ids(n=16)
    target = int(0.75 * slicekit.count_parameters(model))
    sliced, report = slicekit.slice_model(model, ids, target_params=target, budget="evr", mlp_sparsity="auto",
                                          share_basis=share, progress=False)
    out = str(tmp_path / "c")
    slicekit.save_sliced(sliced, out, report=report)
    loaded = slicekit.load_sliced(out)
    assert slicekit.count_parameters(loaded) == report.params_after
    if arch in TIED:
        assert loaded.lm_head.weight is slicekit.get_adapter(loaded).embeddings(loaded)[0].weight
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, sliced(ids).logits)
    prompt = ids[:2, :5]
    kw = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
    g1 = sliced.generate(prompt, **kw)
    assert torch.equal(g1, loaded.generate(prompt, **kw))
    assert torch.equal(g1, loaded.generate(prompt, use_cache=False, **kw))
