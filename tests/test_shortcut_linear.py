"""shortcut_linear: y = x @ S + h @ W^T (+ b), every backend against float64.

Each test runs once per (device, backend) pair that can run here: on a CPU-only machine the torch
reference and the Triton kernel under TRITON_INTERPRET=1; on a GPU machine additionally the Triton
kernel and the CUDA extension on CUDA tensors. Calls go through the public
``slicekit.ops.shortcut_linear``.

Tolerance (the flash-attention rule): max|y - y64| <= 2 x max|y_torch - y64| + atol, where y64 is
the float64 result from the same (low-precision) inputs, y_torch is PyTorch's own unfused
computation in the inputs' dtype on the same device (``shortcut_linear_ref``), and atol is one
rounding of the output, eps(dtype) / 2 x max|y64| (it only matters when PyTorch's error happens to
be ~0, on one-element outputs).
"""
from __future__ import annotations

import pytest
import torch

from slicekit.ops import available_backends, shortcut_linear, shortcut_linear_ref

OP = "shortcut_linear"
HAS_CUDA = torch.cuda.is_available()
DEVICES = ["cpu"] + (["cuda"] if HAS_CUDA else [])
CASES = [(dev, b) for dev in DEVICES for b in available_backends(OP, dev)]
IDS = [f"{dev}-{b}" for dev, b in CASES]
TRITON_CASES = [(dev, b) for dev, b in CASES if b == "triton"]
TRITON_IDS = [f"{dev}-{b}" for dev, b in TRITON_CASES]
GPU_CASES = [(dev, b) for dev, b in CASES if dev == "cuda" and b != "torch"]
LOW = (torch.float16, torch.bfloat16, torch.float32)
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")


def operands(lead, k_in, n, k_out, dtype, device, bias=True, seed=0, h_dtype=None):
    """Random x [*lead, k_in], S [k_in, k_out], h [*lead, n], W [k_out, n], b [k_out] (or None).

    Scaled like a real residual update: S near an orthogonal block, W ~ 1/sqrt(n), so both
    products contribute at the same magnitude.
    """
    g = torch.Generator().manual_seed(11 + seed + 3 * k_in + n + k_out)
    h_dtype = h_dtype or dtype

    def rnd(*shape, scale=1.0, dt=dtype):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dt).to(device)

    x = rnd(*lead, k_in)
    s = rnd(k_in, k_out, scale=k_in ** -0.5)
    h = rnd(*lead, n, dt=h_dtype)
    w = rnd(k_out, n, scale=n ** -0.5, dt=h_dtype)
    b = rnd(k_out, dt=h_dtype) if bias else None
    return x, s, h, w, b


def float64_result(x, s, h, w, b):
    d = lambda t: None if t is None else t.detach().cpu().to(torch.float64)  # noqa: E731
    return shortcut_linear_ref(d(x), d(s), d(h), d(w), d(b))


def check(y, x, s, h, w, b, what=""):
    y64 = float64_result(x, s, h, w, b)
    assert y.shape == y64.shape, f"{what}: shape {tuple(y.shape)} != {tuple(y64.shape)}"
    assert y.dtype == x.dtype, f"{what}: dtype {y.dtype} != x's {x.dtype}"
    y_torch = shortcut_linear_ref(x, s, h, w, b)
    err = (y.cpu().to(torch.float64) - y64).abs().max().item()
    torch_err = (y_torch.cpu().to(torch.float64) - y64).abs().max().item()
    atol = torch.finfo(y.dtype).eps / 2 * y64.abs().max().item()
    if y.dtype == torch.float32 and y.is_cuda:
        # Measured on the H200: Triton's fp32 "ieee" dot sums in another order than cuBLAS SGEMM and
        # lands up to ~6 ulps of |y|max away (cuBLAS: ~1.5); still 1e-6 relative, far below any
        # 16-bit model's rounding. Bound: 8 ulps.
        atol *= 16
    assert err <= 2 * torch_err + atol, f"{what}: max error {err:.3e} > 2 x torch's {torch_err:.3e} + {atol:.1e}"


# ---------------------------------------------------------------------------------------------
# Shapes, dtypes, bias
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("device,backend", CASES, ids=IDS)
@pytest.mark.parametrize("dtype", LOW, ids=str)
@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("M,k_in,n,k_out", [(1, 8, 24, 8), (7, 24, 40, 17), (129, 72, 136, 40), (16, 1, 7, 1)])
def test_matches_float64(device, backend, dtype, bias, M, k_in, n, k_out):
    x, s, h, w, b = operands((M,), k_in, n, k_out, dtype, device, bias)
    y = shortcut_linear(x, s, h, w, b, backend=backend)
    assert y.device.type == device
    check(y, x, s, h, w, b, f"{dtype} M={M} k_in={k_in} n={n} k_out={k_out} bias={bias}")


@pytest.mark.parametrize("device,backend", CASES, ids=IDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
def test_three_dim_inputs(device, backend, dtype, bias):
    x, s, h, w, b = operands((2, 5), 24, 40, 32, dtype, device, bias)
    y = shortcut_linear(x, s, h, w, b, backend=backend)
    assert y.shape == (2, 5, 32)
    check(y, x, s, h, w, b, f"3-D {dtype}")


# ---------------------------------------------------------------------------------------------
# Layouts
# ---------------------------------------------------------------------------------------------
def _relayout(t: torch.Tensor, how: str) -> torch.Tensor:
    """The same values in another memory layout."""
    if how == "transposed":  # column-major 2-D storage
        return t.T.contiguous().T
    if how == "slice":  # last dim sliced out of a wider buffer
        big = torch.zeros(*t.shape[:-1], t.shape[-1] + 5, dtype=t.dtype, device=t.device)
        big[..., 2:2 + t.shape[-1]] = t
        return big[..., 2:2 + t.shape[-1]]
    raise ValueError(how)


@pytest.mark.parametrize("device,backend", CASES, ids=IDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("layout", ["S_transposed", "W_transposed", "x_slice", "h_slice", "h_transposed"])
def test_non_contiguous(device, backend, dtype, layout):
    x, s, h, w, b = operands((33,), 40, 72, 24, dtype, device)
    if layout == "S_transposed":
        s = _relayout(s, "transposed")
    elif layout == "W_transposed":
        w = _relayout(w, "transposed")
    elif layout == "x_slice":
        x = _relayout(x, "slice")
    elif layout == "h_slice":
        h = _relayout(h, "slice")
    else:
        h = _relayout(h, "transposed")
    y = shortcut_linear(x, s, h, w, b, backend=backend)
    check(y, x, s, h, w, b, f"{layout} {dtype}")


# ---------------------------------------------------------------------------------------------
# Triton launcher specifics: float64, mixed residual/writer dtypes, errors, empty
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("device,backend", TRITON_CASES, ids=TRITON_IDS)
def test_float64_goes_to_torch(device, backend):
    x, s, h, w, b = operands((9,), 16, 24, 8, torch.float64, device)
    y = shortcut_linear(x, s, h, w, b, backend=backend)
    assert y.dtype == torch.float64
    assert torch.allclose(y.cpu(), float64_result(x, s, h, w, b), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("device,backend", TRITON_CASES, ids=TRITON_IDS)
@pytest.mark.parametrize("h_dtype", [torch.float16, torch.bfloat16], ids=str)
def test_float32_residual_with_16bit_writer(device, backend, h_dtype):
    """A float32 residual stream with a 16-bit block: each K range multiplies in its own dtype."""
    from slicekit.kernels.shortcut_linear import shortcut_linear_triton

    x, s, h, w, b = operands((21,), 24, 40, 16, torch.float32, device, h_dtype=h_dtype)
    y = shortcut_linear_triton(x, s, h, w, b)
    assert y.dtype == torch.float32
    y64 = float64_result(x, s, h, w, b)
    # fp32 x fp32 products round once each and 16-bit products are exact: fp32-GEMM-grade error.
    assert (y.cpu().double() - y64).abs().max().item() <= 1e-5 * y64.abs().max().item()


@pytest.mark.parametrize("device,backend", TRITON_CASES, ids=TRITON_IDS)
def test_dtype_mismatch_raises(device, backend):
    from slicekit.kernels.shortcut_linear import shortcut_linear_triton

    x, s, h, w, b = operands((3,), 8, 8, 8, torch.float16, device)
    with pytest.raises(TypeError, match="must match"):
        shortcut_linear_triton(x, s.to(torch.bfloat16), h, w, b)
    with pytest.raises(ValueError, match="bias"):
        shortcut_linear_triton(x, s, h, w, torch.zeros(3, dtype=torch.float16, device=device))


@pytest.mark.parametrize("device,backend", TRITON_CASES, ids=TRITON_IDS)
def test_no_tokens(device, backend):
    x, s, h, w, b = operands((0,), 8, 16, 8, torch.float16, device)
    y = shortcut_linear(x, s, h, w, b, backend=backend)
    assert y.shape == (0, 8)


# ---------------------------------------------------------------------------------------------
# GPU: LLaMA-2-7B residual updates at k = 3072 (decode and prefill token counts)
# ---------------------------------------------------------------------------------------------
@needs_cuda
@pytest.mark.parametrize("device,backend", GPU_CASES, ids=[f"{d}-{b}" for d, b in GPU_CASES])
@pytest.mark.parametrize("dtype,M", [(torch.float16, 1), (torch.float16, 64), (torch.float16, 1024),
                                     (torch.bfloat16, 16)], ids=str)
@pytest.mark.parametrize("n", [4096, 11008], ids=["o_proj", "down_proj"])
def test_llama_sizes(device, backend, dtype, M, n):
    x, s, h, w, b = operands((M,), 3072, n, 3072, dtype, device, bias=False)
    check(shortcut_linear(x, s, h, w, b, backend=backend), x, s, h, w, b, f"M={M} n={n} {dtype}")


# ---------------------------------------------------------------------------------------------
# Split-K (decode-sized steps): partials in fp32, the tile's last split sums and rounds once
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def forced_split(request):
    from slicekit.kernels import shortcut_linear as mod

    mod._force_config = mod.TEST_SPLIT_CONFIGS[request.param]
    yield mod._force_config
    mod._force_config = None


@pytest.mark.parametrize("device,backend", TRITON_CASES, ids=TRITON_IDS)
@pytest.mark.parametrize("forced_split", [0, 1, 2], indirect=True, ids=["split2", "split3", "split8"])
@pytest.mark.parametrize("dtype", LOW, ids=str)
@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("M,k_in,n,k_out", [(1, 40, 72, 24), (5, 64, 100, 33), (16, 24, 200, 48), (3, 8, 8, 16)])
def test_split_k_matches_float64(device, backend, forced_split, dtype, bias, M, k_in, n, k_out):
    from slicekit.kernels.shortcut_linear import _counters, shortcut_linear_triton

    x, s, h, w, b = operands((M,), k_in, n, k_out, dtype, device, bias, seed=5)
    for rep in range(2):  # the second call proves the tile counters were re-armed
        y = shortcut_linear_triton(x, s, h, w, b)
        check(y, x, s, h, w, b, f"split-K {forced_split.kwargs} {dtype} M={M} rep={rep}")
    assert int(_counters[y.device].abs().sum()) == 0, "split-K left a tile counter armed"


@pytest.mark.parametrize("device,backend", TRITON_CASES, ids=TRITON_IDS)
@pytest.mark.parametrize("forced_split", [0], indirect=True, ids=["split2"])
def test_split_k_refused_for_large_m(device, backend, forced_split):
    from slicekit.kernels.shortcut_linear import shortcut_linear_triton

    x, s, h, w, b = operands((17,), 16, 16, 16, torch.float16, device, True)
    with pytest.raises(ValueError, match="split-K"):
        shortcut_linear_triton(x, s, h, w, b)
