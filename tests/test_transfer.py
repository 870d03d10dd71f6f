"""Pinned-staged copies between CPU RAM and the GPU: exact, ties kept, clean fallback."""
import pytest
import torch
import torch.nn as nn

from slicekit import transfer

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _tensors(device="cpu"):
    g = torch.Generator().manual_seed(0)
    big = torch.randn(1031, 1029, generator=g).to(torch.float16)  # > MIN_STAGED_BYTES: staged
    small = torch.randn(7, 5, generator=g, dtype=torch.float64)  # below: a plain copy
    strided = torch.randn(2048, 600, generator=g).to(torch.bfloat16)[:, ::2]  # non-contiguous, staged
    return [t.to(device) for t in (big, small, strided)]


def test_cpu_only_passes_tensors_through():
    ts = _tensors()
    out = transfer.to_device(ts, torch.device("cpu"))
    assert all(torch.equal(a, b) for a, b in zip(out, ts))
    back = transfer.to_host(ts)
    assert all(torch.equal(a, b) and a.device.type == "cpu" for a, b in zip(back, ts))


def test_move_module_leaves_cpu_module_alone():
    m = nn.Linear(4, 3)
    w = m.weight
    transfer.move_module(m, "cpu")
    assert m.weight is w and m.weight.device.type == "cpu"


@cuda
@pytest.mark.parametrize("pinned", [True, False])
def test_round_trip_is_exact(pinned):
    ts = _tensors()
    dev = transfer.to_device(ts, torch.device("cuda"), pinned=pinned)
    assert all(d.device.type == "cuda" and d.dtype == t.dtype and torch.equal(d.cpu(), t) for d, t in zip(dev, ts))
    back = transfer.to_host(dev, pinned=pinned)
    for b, t in zip(back, ts):
        assert b.device.type == "cpu" and not b.is_pinned()  # results live in pageable memory
        assert torch.equal(b, t)


@cuda
def test_move_module_keeps_parameter_identity_and_ties():
    m = nn.Sequential(nn.Linear(1024, 1024), nn.Linear(1024, 1024)).cuda().half()
    m[1].weight = m[0].weight  # a tie across submodules
    m.register_buffer("table", torch.randn(600, 1000, device="cuda"))
    w = m[0].weight
    expect = w.detach().cpu()
    transfer.move_module(m, "cpu")
    assert m[0].weight is w and m[1].weight is w and w.device.type == "cpu"
    assert torch.equal(w.detach(), expect)
    assert m.table.device.type == "cpu"


@cuda
def test_move_module_round_trip():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(1024, 2048), nn.LayerNorm(2048)).half()
    expect = {k: v.clone() for k, v in m.state_dict().items()}
    transfer.move_module(m, "cuda")
    assert all(p.device.type == "cuda" for p in m.parameters())
    transfer.move_module(m, "cpu")
    assert all(torch.equal(v, expect[k]) for k, v in m.state_dict().items())


@cuda
def test_meta_tensors_stay_meta():
    m = nn.Linear(2048, 1024, device="cuda")
    m.bias = nn.Parameter(torch.empty(1024, device="meta"))
    transfer.move_module(m, "cpu")
    assert m.weight.device.type == "cpu" and m.bias.is_meta


@cuda
def test_pinning_failure_falls_back_with_a_warning(monkeypatch):
    monkeypatch.setattr(transfer, "_pinned_failed", False)

    def refuse(*args, **kwargs):
        raise RuntimeError("cudaHostAlloc: out of memory (simulated)")

    monkeypatch.setattr(torch.Tensor, "pin_memory", refuse)
    ts = _tensors()
    with pytest.warns(UserWarning, match="pinned host memory unavailable"):
        dev = transfer.to_device(ts, torch.device("cuda"))
    assert all(torch.equal(d.cpu(), t) for d, t in zip(dev, ts))
    assert not transfer.pinned_enabled()  # later copies go the plain way without warning again
