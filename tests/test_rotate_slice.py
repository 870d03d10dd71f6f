"""rotate_slice: readers (W Q)[:, :k] and writers (Q^T W)[:k], every backend against float64.

Each test runs once per (device, backend) pair that can run here: on a CPU-only machine the torch
reference and the Triton kernel under TRITON_INTERPRET=1; on a GPU machine additionally the Triton
kernel and the CUDA extension on CUDA tensors. Calls go through the public ``slicekit.ops.rotate_slice``.

Error measure: E(y) = max|y - exact| / max|exact|, exact = the float64 product of the kept columns.
Precision rule for 16-bit outputs: E(out) <= 1.1 * E(rn(exact)) + 2^-20, i.e. at most 10% above the
error of rounding the exact result once (the 2^-20 only matters when that rounding happens to be
~0, on one-element outputs). Rounding Q to 16 bits first typically breaks this rule (checked below),
so passing it needs Q's precision kept. float32 outputs: the flash-attention rule, E(out) <= 2 x the
error of torch's own fp32 product + 2^-23 sqrt(d). float64 weights: the reference to 1e-12.
"""
from __future__ import annotations

import math

import pytest
import torch

from slicekit.ops import available_backends, rotate_slice

OP = "rotate_slice"
HAS_CUDA = torch.cuda.is_available()
DEVICES = ["cpu"] + (["cuda"] if HAS_CUDA else [])
CASES = [(dev, b) for dev in DEVICES for b in available_backends(OP, dev)]
IDS = [f"{dev}-{b}" for dev, b in CASES]
TRITON_CASES = [(dev, b) for dev, b in CASES if b == "triton"]
TRITON_IDS = [f"{dev}-{b}" for dev, b in TRITON_CASES]
GPU_CASES = [(dev, b) for dev, b in CASES if dev == "cuda" and b != "torch"]
LOW = (torch.float16, torch.bfloat16, torch.float32)
SIXTEEN = (torch.float16, torch.bfloat16)
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")


def orthogonal(d: int, seed: int = 0, device: str = "cpu") -> torch.Tensor:
    """A random float64 orthogonal [d, d] matrix (QR of a Gaussian one, factored on ``device``)."""
    g = torch.Generator().manual_seed(100 + d + seed)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64).to(device))
    return q


def weight_of(shape: tuple[int, int], dtype: torch.dtype, device: str, layout: str = "contiguous",
              seed: int = 0) -> torch.Tensor:
    """A random weight of ``shape`` with the given memory layout (values identical across layouts)."""
    g = torch.Generator().manual_seed(7 + 13 * shape[0] + shape[1] + seed)
    w = torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)
    r, c = shape
    if layout == "contiguous":
        return w.to(device)
    if layout == "transposed":  # column-major storage, unit stride along rows
        return w.T.contiguous().to(device).T
    if layout == "column_slice":  # row stride larger than the row length
        big = torch.zeros(r, c + 5, dtype=dtype)
        big[:, 3:3 + c] = w
        return big.to(device)[:, 3:3 + c]
    if layout == "strided":  # no unit stride at all
        big = torch.zeros(2 * r, 2 * c, dtype=dtype)
        big[::2, ::2] = w
        return big.to(device)[::2, ::2]
    raise ValueError(layout)


def exact(weight: torch.Tensor, q: torch.Tensor, k: int, dim: int) -> torch.Tensor:
    w = weight.cpu().to(torch.float64)
    qk = q.cpu().to(torch.float64)[:, :k]
    return w @ qk if dim == 1 else qk.T @ w


def rel_max_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    scale = ref.abs().max().item()
    return (y.to(ref.device, torch.float64) - ref).abs().max().item() / (scale if scale > 0 else 1.0)


def check_rounded_exact(out: torch.Tensor, ref: torch.Tensor, what: str, slack: float = 2.0 ** -20) -> float:
    """The 1.1x-of-rounding rule for 16-bit outputs; returns the max-error ratio.

    On outputs of 256+ elements two statistics back it up, because a max over many elements is
    often set by the rounding alone even when Q lost precision: the RMS error may exceed the
    rounding's RMS error by 1% at most (fp16 Q: ~41%), and at most 10% of the elements may differ
    from the correctly rounded exact value (fp16 Q: ~42%; a round-to-nearest fp32 sum flips
    ~0.1-0.3%, one tensor-core accumulator truncating over K = 8192 ~7%).
    """
    err = rel_max_err(out, ref)
    rounded = ref.to(out.dtype)
    round_err = rel_max_err(rounded, ref)
    assert err <= 1.1 * round_err + slack, (
        f"{what}: max rel error {err:.3e} > 1.1 x rounding error {round_err:.3e} "
        f"(ratio {err / max(round_err, 1e-30):.3f})"
    )
    if out.numel() >= 256:
        diff = out.to(ref.device, torch.float64) - ref
        rms_ratio = (diff.square().mean() / (rounded.to(torch.float64) - ref).square().mean()).sqrt().item()
        assert rms_ratio <= 1.01, f"{what}: RMS error {rms_ratio:.4f} x that of rounding"
        flipped = (out.to(ref.device) != rounded).double().mean().item()
        assert flipped <= 0.10, f"{what}: {100 * flipped:.1f}% of the outputs are not the correctly rounded value"
    return err / max(round_err, 1e-30)


def check_fp32(out: torch.Tensor, weight: torch.Tensor, q: torch.Tensor, k: int, dim: int, ref: torch.Tensor,
               what: str) -> None:
    """Flash-attention rule against torch's own fp32 product on the same device."""
    w32 = weight.to(torch.float32)
    q32 = q[:, :k].to(torch.float32)
    torch_out = w32 @ q32 if dim == 1 else q32.T @ w32
    err, torch_err = rel_max_err(out, ref), rel_max_err(torch_out, ref)
    d = weight.shape[dim]
    atol = 2.0 ** -23 * math.sqrt(d)
    assert err <= 2 * torch_err + atol, f"{what}: fp32 error {err:.3e} > 2 x torch's {torch_err:.3e} + {atol:.1e}"


def check(out, weight, q, k, dim, what=""):
    ref = exact(weight, q, k, dim)
    assert out.shape == ref.shape, f"{what}: shape {tuple(out.shape)} != {tuple(ref.shape)}"
    if out.dtype in SIXTEEN:
        check_rounded_exact(out, ref, what)
    elif out.dtype == torch.float32:
        check_fp32(out, weight, q, k, dim, ref, what)
    else:
        assert rel_max_err(out, ref) <= 1e-12, what


# ---------------------------------------------------------------------------------------------
# Shapes, dtypes, k
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("device,backend", CASES, ids=IDS)
@pytest.mark.parametrize("dtype", LOW, ids=str)
@pytest.mark.parametrize("dim", [1, 0])
@pytest.mark.parametrize("m,d,k", [(1, 8, 8), (7, 24, 13), (129, 136, 100), (129, 136, 1), (33, 136, 136)])
def test_matches_rounded_exact(device, backend, dtype, dim, m, d, k):
    q = orthogonal(d).to(device)
    weight = weight_of((m, d) if dim == 1 else (d, m), dtype, device)
    out = rotate_slice(weight, q, k, dim=dim, backend=backend)
    assert out.dtype == dtype and out.device.type == device
    check(out, weight, q, k, dim, f"{dtype} dim={dim} m={m} d={d} k={k}")


@pytest.mark.parametrize("device,backend", CASES, ids=IDS)
@pytest.mark.parametrize("dim", [1, 0])
def test_every_k(device, backend, dim):
    d, m = 24, 7
    q = orthogonal(d).to(device)
    weight = weight_of((m, d) if dim == 1 else (d, m), torch.float16, device)
    for k in range(1, d + 1):
        check(rotate_slice(weight, q, k, dim=dim, backend=backend), weight, q, k, dim, f"dim={dim} k={k}")


@pytest.mark.parametrize("device,backend", CASES, ids=IDS)
@pytest.mark.parametrize("dtype", LOW, ids=str)
@pytest.mark.parametrize("dim", [1, 0])
def test_float32_q(device, backend, dtype, dim):
    d, m, k = 72, 65, 50
    q = orthogonal(d).to(torch.float32).to(device)
    weight = weight_of((m, d) if dim == 1 else (d, m), dtype, device)
    check(rotate_slice(weight, q, k, dim=dim, backend=backend), weight, q, k, dim, f"{dtype} fp32 q dim={dim}")


# ---------------------------------------------------------------------------------------------
# Layouts
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("device,backend", CASES, ids=IDS)
@pytest.mark.parametrize("layout", ["transposed", "column_slice", "strided"])
@pytest.mark.parametrize("q_layout", ["wide", "transposed"])
@pytest.mark.parametrize("dim", [1, 0])
def test_non_contiguous(device, backend, layout, q_layout, dim):
    d, m, k = 40, 33, 29
    dtype = torch.bfloat16 if layout == "strided" else torch.float16
    weight = weight_of((m, d) if dim == 1 else (d, m), dtype, device, layout)
    assert not weight.is_contiguous()
    q = orthogonal(d)
    if q_layout == "wide":  # k of the d columns kept, q itself a slice with a row stride > k
        q = q.to(device)[:, : k + 3]
    else:  # column-major storage
        q = q.T.contiguous().to(device).T
    out = rotate_slice(weight, q, k, dim=dim, backend=backend)
    assert out.is_contiguous()
    check(out, weight, q, k, dim, f"{layout} weight, {q_layout} q, dim={dim}")


# ---------------------------------------------------------------------------------------------
# Output dtypes, float64 weights
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("device,backend", CASES, ids=IDS)
@pytest.mark.parametrize("dtype,out_dtype", [
    (torch.float16, torch.float32), (torch.bfloat16, torch.float32),
    (torch.float32, torch.bfloat16), (torch.float16, torch.bfloat16),
], ids=str)
def test_out_dtype(device, backend, dtype, out_dtype):
    d, m, k = 48, 37, 40
    q = orthogonal(d).to(device)
    for dim in (1, 0):
        weight = weight_of((m, d) if dim == 1 else (d, m), dtype, device)
        out = rotate_slice(weight, q, k, dim=dim, out_dtype=out_dtype, backend=backend)
        assert out.dtype == out_dtype
        check(out, weight, q, k, dim, f"{dtype}->{out_dtype} dim={dim}")


@pytest.mark.parametrize("device,backend", CASES, ids=IDS)
def test_float64_weight(device, backend):
    d, m, k = 24, 9, 17
    q = orthogonal(d).to(device)
    for dim in (1, 0):
        weight = weight_of((m, d) if dim == 1 else (d, m), torch.float64, device)
        out = rotate_slice(weight, q, k, dim=dim, backend=backend)
        assert out.dtype == torch.float64
        check(out, weight, q, k, dim, f"float64 dim={dim}")


# ---------------------------------------------------------------------------------------------
# The precision rule has teeth; the split itself
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("device,backend", CASES, ids=IDS)
@pytest.mark.parametrize("dtype", SIXTEEN, ids=str)
@pytest.mark.parametrize("dim", [1, 0])
def test_precision_rule_without_slack(device, backend, dtype, dim):
    """A larger product, where the 1.1x rule needs no absolute slack at all."""
    d, m, k = 256, 256, 192
    q = orthogonal(d, seed=1).to(device)
    weight = weight_of((m, d) if dim == 1 else (d, m), dtype, device, seed=1)
    ref = exact(weight, q, k, dim)
    check_rounded_exact(rotate_slice(weight, q, k, dim=dim, backend=backend), ref, f"{dtype} dim={dim}", slack=0.0)


def test_rule_rejects_half_precision_q():
    """Rounding Q to fp16 before an otherwise exact product breaks the rule on the same data,
    so the rule above really measures whether Q's precision was kept."""
    d, m, k = 256, 256, 192
    q = orthogonal(d, seed=1)
    for dim in (1, 0):
        weight = weight_of((m, d) if dim == 1 else (d, m), torch.float16, "cpu", seed=1)
        ref = exact(weight, q, k, dim)
        qh = q[:, :k].half().double()
        naive = (weight.double() @ qh if dim == 1 else qh.T @ weight.double()).half()
        with pytest.raises(AssertionError):
            check_rounded_exact(naive, ref, "fp16 Q", slack=0.0)


@pytest.mark.parametrize("device,backend", TRITON_CASES, ids=TRITON_IDS)
@pytest.mark.parametrize("dtype", SIXTEEN, ids=str)
def test_split_hi_lo(device, backend, dtype):
    from slicekit.kernels.rotate_slice import split_hi_lo

    residual = 2.0 ** -21 if dtype == torch.float16 else 2.0 ** -15
    g = torch.Generator().manual_seed(3)
    base = torch.randn(40, 70, generator=g, dtype=torch.float64)
    for scale in (1.0, 1e4, 1e-30, 0.0):
        for q in (base * scale, (base * scale).to(torch.float32), (base * scale).T, (base * scale)[:, ::3]):
            q = q.to(device)
            hi, lo, inv = split_hi_lo(q, dtype)
            assert hi.dtype == lo.dtype == dtype and hi.shape == q.shape and hi.is_contiguous()
            assert torch.isfinite(hi).all() and torch.isfinite(lo).all()
            m, e = torch.frexp(inv.cpu())
            assert m.item() == 0.5, "inv_scale must be a power of two"
            back = (hi.cpu().double() + lo.cpu().double()) * inv.cpu().double()
            q64 = q.cpu().double()
            amax = q64.abs().max().item()
            assert (back - q64).abs().max().item() <= residual * amax, f"scale {scale}"


@pytest.mark.parametrize("device,backend", TRITON_CASES, ids=TRITON_IDS)
def test_triton_dual_accumulators(device, backend):
    """flush=False: hi and lo products in two accumulators."""
    from slicekit.kernels.rotate_slice import rotate_slice_triton

    d, m, k = 136, 70, 100
    q = orthogonal(d).to(device)
    for dim in (1, 0):
        for dtype in SIXTEEN:
            weight = weight_of((m, d) if dim == 1 else (d, m), dtype, device)
            out = rotate_slice_triton(weight, q, k, dim, dtype, flush=False)
            check(out, weight, q, k, dim, f"flush=False {dtype} dim={dim}")


@pytest.mark.parametrize("device,backend", CASES)
def test_public_op_passes_flush(device, backend, monkeypatch):
    """rotate_slice(..., flush=False) reaches the Triton kernel; other backends accept and ignore it."""
    seen = []
    if backend == "triton":
        import slicekit.kernels.rotate_slice as kr

        real = kr.rotate_slice_triton
        monkeypatch.setattr(kr, "rotate_slice_triton", lambda *a, **kw: seen.append(kw.get("flush")) or real(*a, **kw))
    d, m, k = 72, 40, 50
    q = orthogonal(d).to(device)
    weight = weight_of((m, d), torch.float16, device)
    out = rotate_slice(weight, q, k, dim=1, backend=backend, flush=False)
    check(out, weight, q, k, 1, f"public op flush=False via {backend}")
    assert seen == ([False] if backend == "triton" else [])


@pytest.mark.parametrize("device,backend", TRITON_CASES, ids=TRITON_IDS)
def test_triton_rejects_integer_weight(device, backend):
    from slicekit.kernels.rotate_slice import rotate_slice_triton

    with pytest.raises(TypeError, match="weight dtype"):
        weight = torch.ones(4, 8, dtype=torch.int8, device=device)
        rotate_slice_triton(weight, orthogonal(8).to(device), 4, 1, torch.float16)


# ---------------------------------------------------------------------------------------------
# GPU: model-sized products (the widths where tensor-core accumulation bias would show)
# ---------------------------------------------------------------------------------------------
@needs_cuda
@pytest.mark.parametrize("device,backend", GPU_CASES, ids=[f"{d}-{b}" for d, b in GPU_CASES])
@pytest.mark.parametrize("dtype", SIXTEEN, ids=str)
@pytest.mark.parametrize("rows,d,dim", [(11008, 4096, 1), (11008, 4096, 0), (2048, 8192, 1), (2048, 8192, 0)])
def test_model_sized(device, backend, dtype, rows, d, dim):
    k = 3 * d // 4
    q = orthogonal(d, device=device)
    g = torch.Generator(device=device).manual_seed(5)
    shape = (rows, d) if dim == 1 else (d, rows)
    weight = (torch.randn(*shape, generator=g, device=device, dtype=torch.float32) * 0.02).to(dtype)
    out = rotate_slice(weight, q, k, dim=dim, backend=backend)
    qk = q[:, :k]
    ref = weight.double() @ qk if dim == 1 else qk.T @ weight.double()
    ratio = check_rounded_exact(out, ref, f"{backend} {dtype} {shape} dim={dim}", slack=0.0)
    print(f"\n[rotate_slice {backend} {dtype} {shape} dim={dim} k={k}] max-error ratio to rounding {ratio:.4f}")
