"""On a GPU: the fast path (kernels) and the float64 reference path slice a model the same way."""
import pytest
import torch

import slicekit
from tiny_models import calib_ids, rel, tiny_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("arch", ["llama", "opt", "phi"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_fast_path_matches_reference(arch, dtype):
    model = tiny_model(arch, dtype=dtype)
    ids = calib_ids(n=16, t=64)
    fast, r_fast = slicekit.slice_model(model, ids, sparsity=0.25, device="cuda", progress=False)
    ref, r_ref = slicekit.slice_model(model, ids, sparsity=0.25, device="cuda", backend="torch", progress=False)
    assert r_fast.dims == r_ref.dims
    held = calib_ids(n=4, t=64, seed=9)
    with torch.no_grad():
        a = fast.cuda()(held.cuda()).logits.float()
        b = ref.cuda()(held.cuda()).logits.float()
        dense = model.cuda()(held.cuda()).logits.float()
    # the two sliced models agree far more closely than either agrees with the dense model
    assert rel(a, b) < 2e-2
    assert rel(a, b) < 0.25 * rel(b, dense)


def test_model_stays_in_cpu_memory():
    model = tiny_model("llama", dtype=torch.float16)
    sliced, report = slicekit.slice_model(model, calib_ids(), sparsity=0.25, device="cuda", progress=False)
    assert all(p.device.type == "cpu" for p in model.parameters())
    assert all(p.device.type == "cpu" for p in sliced.parameters())
    assert report.peak_gpu_memory_mib is not None


def test_sliced_model_runs_on_gpu_with_fused_shortcut():
    model = tiny_model("llama", dtype=torch.float16).cuda()
    ids = calib_ids().cuda()
    sliced, _ = slicekit.slice_model(model, ids, sparsity=0.25, progress=False)
    with torch.no_grad():
        base = sliced(ids).logits.float()
        for layer in sliced.model.layers:
            layer.shortcut_backend = "triton"
        fused = sliced(ids).logits.float()
    assert rel(fused, base) < 1e-2

