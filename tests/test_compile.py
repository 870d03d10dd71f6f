"""torch.compile of a sliced model: the fused shortcut op must trace (fullgraph) and match eager."""
from __future__ import annotations

import os

import pytest
import torch

import slicekit
from tiny_models import calib_ids, tiny_model


@pytest.fixture(scope="module")
def sliced_llama():
    model = tiny_model("llama", dtype=torch.float32)
    sliced, _ = slicekit.slice_model(model, calib_ids(model.config.vocab_size), sparsity=0.25, progress=False)
    return sliced


@pytest.mark.parametrize("compiler", ["eager", "aot_eager"])
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_compiled_sliced_model_matches_eager(sliced_llama, backend, compiler, monkeypatch):
    if backend == "triton":
        pytest.importorskip("triton")
        if not torch.cuda.is_available():
            monkeypatch.setenv("TRITON_INTERPRET", "1")
    for layer in sliced_llama.model.layers:
        layer.shortcut_backend = backend
    ids = torch.randint(0, sliced_llama.config.vocab_size, (2, 11), generator=torch.Generator().manual_seed(0))
    try:
        with torch.no_grad():
            ref = sliced_llama(ids).logits
            torch._dynamo.reset()
            # fullgraph: a graph break around the shortcut op would hide a tracing failure
            out = torch.compile(sliced_llama, backend=compiler, fullgraph=True)(ids).logits
    finally:
        for layer in sliced_llama.model.layers:
            layer.shortcut_backend = None
        torch._dynamo.reset()
    assert out.shape == ref.shape
    assert torch.isfinite(ref).all()
    err = float((out - ref).abs().max() / ref.abs().max())
    assert err < 1e-5, err


def test_triton_custom_op_fake_shape():
    pytest.importorskip("triton")
    x = torch.empty(3, 5, 16, device="meta")
    s = torch.empty(16, 12, device="meta")
    h = torch.empty(3, 5, 40, device="meta")
    w = torch.empty(12, 40, device="meta")
    with torch._subclasses.FakeTensorMode():
        fx, fs, fh, fw = (torch.empty(t.shape) for t in (x, s, h, w))
        y = torch.ops.slicekit.shortcut_linear_triton(fx, fs, fh, fw, None)
    assert tuple(y.shape) == (3, 5, 12)
