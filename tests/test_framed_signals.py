"""Framed signals (slicing.py, _Slicer.to_full): the same sliced model as original-basis signals.

Framing forms each full-width signal in the coordinates of the basis its block's input was sliced
with (skip map = zero padding, writers rotated once), and undoes the frame in the second moment and
the next slicing. In exact arithmetic nothing changes: float64 models must agree to rounding.
"""
import pytest
import torch

import slicekit
from tiny_models import calib_ids, rel, tiny_model

FAMILIES = ["llama", "mistral", "qwen2", "opt", "phi"]  # RMSNorm, GQA, biases, LayerNorm, parallel


def _sliced_logits(monkeypatch, frame: str, arch: str, dtype: torch.dtype, **kw):
    monkeypatch.setenv("SLICEKIT_SIGNAL_FRAME", frame)
    model = tiny_model(arch, dtype=dtype)
    sliced, report = slicekit.slice_model(model, calib_ids(n=16, t=64), sparsity=0.25, progress=False, **kw)
    with torch.no_grad():
        return sliced(calib_ids(n=4, t=64, seed=9)).logits.double(), report


@pytest.mark.parametrize("arch", FAMILIES)
def test_framed_equals_original_basis_in_float64(monkeypatch, arch):
    framed, r1 = _sliced_logits(monkeypatch, "1", arch, torch.float64)
    plain, r0 = _sliced_logits(monkeypatch, "0", arch, torch.float64)
    assert r1.dims == r0.dims
    assert rel(framed, plain) < 1e-11
    assert r1.explained_variance == pytest.approx(r0.explained_variance, rel=1e-9)


@pytest.mark.parametrize("arch", ["llama", "opt"])
def test_framed_float32_within_fp32_rounding(monkeypatch, arch):
    framed, _ = _sliced_logits(monkeypatch, "1", arch, torch.float32)
    plain, _ = _sliced_logits(monkeypatch, "0", arch, torch.float32)
    assert rel(framed, plain) < 1e-5


def test_framed_with_mlp_pruning_and_tied_embeddings(monkeypatch):
    """The refitted (pruned) MLP writer and the tied head's second moments go through the frame too."""
    kw = dict(mlp_sparsity=0.25, head_fit="lstsq")
    framed, r1 = _sliced_logits(monkeypatch, "1", "llama_tied", torch.float64, **kw)
    plain, r0 = _sliced_logits(monkeypatch, "0", "llama_tied", torch.float64, **kw)
    assert r1.extra["tied_embeddings"] and r1.extra["intermediate_sizes"] == r0.extra["intermediate_sizes"]
    assert rel(framed, plain) < 1e-10


def test_frame_request_ignored_where_it_cannot_apply(monkeypatch):
    """fp16 model on the CPU (signals combined in fp32) and shared bases: framing stays off, runs fine."""
    a, _ = _sliced_logits(monkeypatch, "1", "llama", torch.float16)
    b, _ = _sliced_logits(monkeypatch, "0", "llama", torch.float16)
    assert torch.equal(a, b)
    a, _ = _sliced_logits(monkeypatch, "1", "llama", torch.float64, share_basis=2)
    b, _ = _sliced_logits(monkeypatch, "0", "llama", torch.float64, share_basis=2)
    assert torch.equal(a, b)
