"""SliceGPT's exactness claims on random tiny float64 models of every supported architecture."""
import pytest
import torch

import slicekit
from slicekit.pca import random_orthogonal
from tiny_models import calib_ids, rel, tiny_model

TOL = 1e-10


@pytest.mark.parametrize("rotation", ["identity", "random", "pca"])
def test_full_width_rotation_is_exact(arch_model, rotation):
    """identity = fused norms alone; random = any orthogonal Q; pca = the calibrated Q with k = d."""
    arch, model, ids, ref = arch_model
    sliced, report = slicekit.slice_model(model, ids, sparsity=0.0, rotation=rotation, progress=False)
    with torch.no_grad():
        out = sliced(ids).logits
    assert rel(out, ref) < TOL, f"{arch}/{rotation}: {rel(out, ref):.2e}"
    assert all(k == model.config.hidden_size for k in report.dims)


def test_random_rotation_with_sliced_head_is_exact(arch_model):
    """The head rotated by its own random Q_L (k_L = d) still reproduces the logits."""
    arch, model, ids, ref = arch_model
    d = model.config.hidden_size
    n_pos = slicekit.get_adapter(model).num_positions(model.config.num_hidden_layers)
    sliced, _ = slicekit.slice_model(model, ids, sparsity=0.0, dims=[d] * n_pos, rotation="random", progress=False)
    with torch.no_grad():
        assert rel(sliced(ids).logits, ref) < TOL


def test_original_model_untouched(arch_model):
    arch, model, ids, ref = arch_model
    before = {n: p.clone() for n, p in model.state_dict().items()}
    slicekit.slice_model(model, ids, sparsity=0.25, progress=False)
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[n], after[n]) for n in before)
    with torch.no_grad():
        assert torch.equal(model(ids).logits, ref)


def _confine_to_subspace(model, k: int, seed: int = 3):
    """Make every residual writer write only into a random k-dim subspace (span of P, d x k)."""
    d = model.config.hidden_size
    basis = random_orthogonal(d, torch.Generator().manual_seed(seed))[:, :k]
    proj = basis @ basis.T
    with torch.no_grad():
        base = model.model
        base.embed_tokens.weight.copy_(base.embed_tokens.weight @ proj)
        for layer in base.layers:
            for lin in (layer.self_attn.o_proj, layer.mlp.down_proj):
                lin.weight.copy_(proj @ lin.weight)
    return model


def test_rmsnorm_divides_by_original_width():
    """A stream confined to k dims sliced to k must be exact: only true if the norm keeps dividing by d."""
    model = _confine_to_subspace(tiny_model("llama"), k=40)
    ids = calib_ids(n=16)
    with torch.no_grad():
        ref = model(ids).logits
    sliced, report = slicekit.slice_model(model, ids, sparsity=1 - 40 / 64, slice_head=True, progress=False)
    assert report.dims == [40] * 5
    assert min(report.explained_variance) > 1 - 1e-12
    with torch.no_grad():
        assert rel(sliced(ids).logits, ref) < 1e-9
    norm = sliced.model.layers[0].attn_norm
    assert norm.dim == 64


def test_rmsnorm_models_are_not_centred():
    """Centring the embeddings of an RMSNorm model changes its function (the reference's slip)."""
    model = tiny_model("llama")
    ids = calib_ids()
    sliced, _ = slicekit.slice_model(model, ids, sparsity=0.0, rotation="identity", progress=False)
    emb = model.model.embed_tokens.weight
    assert torch.equal(sliced.model.embed_tokens.weight, emb)  # identity rotation, no centring
    row_means = emb.mean(dim=1).abs().max()
    assert row_means > 1e-3  # the test is meaningful: the embeddings are not already centred


def test_layernorm_models_are_centred():
    model = tiny_model("opt")
    ids = calib_ids()
    sliced, _ = slicekit.slice_model(model, ids, sparsity=0.0, rotation="identity", progress=False)
    assert sliced.model.decoder.embed_tokens.weight.mean(dim=1).abs().max() < 1e-12
    assert sliced.model.decoder.layers[0].attn_out.weight.mean(dim=0).abs().max() < 1e-12


def test_pca_basis_orthogonal():
    from slicekit.pca import pca_basis

    x = torch.randn(500, 48, dtype=torch.float64) * torch.linspace(0.1, 3, 48, dtype=torch.float64)
    q, eig = pca_basis(x.T @ x)
    assert torch.allclose(q @ q.T, torch.eye(48, dtype=torch.float64), atol=1e-12)
    assert bool((eig[:-1] >= eig[1:]).all())
    # eigenvalues are those of the UNdamped matrix
    assert torch.allclose(eig, torch.linalg.eigvalsh(x.T @ x).flip(0).clamp_min(0), rtol=1e-9, atol=1e-9)
