"""covariance: C += X^T diag(m) X into a float64 accumulator, every backend against float64.

Each test runs once per (device, backend) pair that can run here: on a CPU-only machine the torch
reference and the Triton kernel under TRITON_INTERPRET=1; on a GPU machine additionally the Triton
kernel and the CUDA extension on CUDA tensors. Every call goes through the public
``slicekit.ops.covariance``.

Tolerance (relative Frobenius error against ``covariance_ref`` of the SAME low-precision input):
fp16/bf16 1e-6 -- their products are exact in fp32, so only the sums may cost accuracy, and they
must stay close to the float64 path (DESIGN.md section 2). fp32 2e-6: fp32 x fp32 products are
not exact in fp32 (one rounding each, ~6e-8), and a round-to-nearest fp32 sum over a 256-row chunk
drifts by up to ~6e-8 * sqrt(256) ~ 1e-6. Every result must also be EXACTLY symmetric.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from slicekit.ops import available_backends, covariance, covariance_ref

OP = "covariance_accumulate"
HAS_CUDA = torch.cuda.is_available()
DEVICES = ["cpu"] + (["cuda"] if HAS_CUDA else [])
CASES = [(dev, b) for dev in DEVICES for b in available_backends(OP, dev)]
IDS = [f"{dev}-{b}" for dev, b in CASES]
TRITON_CASES = [(dev, b) for dev, b in CASES if b == "triton"]
TOL = {torch.float16: 1e-6, torch.bfloat16: 1e-6, torch.float32: 2e-6, torch.float64: 1e-12}
LOW = (torch.float16, torch.bfloat16, torch.float32)
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")


def activations(n: int, d: int, dtype: torch.dtype, device: str, seed: int = 0) -> torch.Tensor:
    """Random activations with a non-zero mean and a few large-magnitude (outlier) channels."""
    g = torch.Generator().manual_seed(1000 * seed + 31 * n + d)
    x = torch.randn(n, d, generator=g, dtype=torch.float64) + 0.5
    cols = torch.randperm(d, generator=g)[: max(1, d // 32)]
    x[:, cols] *= 30.0
    return x.to(dtype).to(device)


def random_mask(n: int, device: str, p_keep: float = 0.7, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(7 + seed + n)
    m = (torch.rand(n, generator=g) < p_keep).to(torch.uint8)
    m[0] = 1  # at least one kept row, so the reference is non-zero
    return m.to(device)


def reference(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    d = x.shape[-1]
    m = None if mask is None else mask.reshape(-1).cpu()
    return covariance_ref(x.reshape(-1, d).cpu(), m, torch.zeros(d, d, dtype=torch.float64))


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.cpu() - ref).norm() / ref.norm()).item()


def upper_rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """rel_err over the upper triangle and diagonal: all that the streaming form (symmetric=False) writes."""
    upper = torch.triu(torch.ones_like(ref, dtype=torch.bool))
    return ((out.cpu() - ref)[upper].norm() / ref[upper].norm()).item()


def check(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype, what: str = "") -> None:
    assert out.dtype == torch.float64
    assert torch.equal(out, out.T), f"{what}: result is not exactly symmetric"
    err = rel_err(out, ref)
    assert err <= TOL[dtype], f"{what}: relative Frobenius error {err:.3e} > {TOL[dtype]:.0e} ({dtype})"


def zeros(d: int, device: str) -> torch.Tensor:
    return torch.zeros(d, d, dtype=torch.float64, device=device)


# ---------------------------------------------------------------------------------------------
# Shapes and dtypes
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("device,backend", CASES, ids=IDS)
@pytest.mark.parametrize("dtype", LOW, ids=str)
@pytest.mark.parametrize("n", [1, 7, 129, 1000])
@pytest.mark.parametrize("d", [1, 7, 33, 129])
def test_matches_float64_reference(device, backend, dtype, n, d):
    x = activations(n, d, dtype, device)
    out = covariance(x, None, zeros(d, device), backend=backend)
    check(out, reference(x, None), dtype, f"N={n} d={d}")


@pytest.mark.parametrize("device,backend", CASES, ids=IDS)
@pytest.mark.parametrize("dtype", LOW, ids=str)
@pytest.mark.parametrize("n,d", [(256, 64), (64, 128)])
def test_block_multiple_shapes(device, backend, dtype, n, d):
    """N and d multiples of every block size: the kernel's unpredicated-load path."""
    x = activations(n, d, dtype, device)
    out = covariance(x, None, zeros(d, device), backend=backend)
    check(out, reference(x, None), dtype, f"N={n} d={d}")


CUDA_CASES = [c for c in CASES if c[0] == "cuda"]


@needs_cuda
@pytest.mark.parametrize("device,backend", CUDA_CASES, ids=[f"{c[0]}-{c[1]}" for c in CUDA_CASES])
@pytest.mark.parametrize("dtype", LOW, ids=str)
@pytest.mark.parametrize("n,d", [(4096 + 32, 1000), (4096 + 32, 4095), (65536, 500), (300, 2048 + 64)])
def test_large_shapes_gpu(device, backend, dtype, n, d):
    """(4128, 4095) runs the autotuner (restore_value must keep its trial runs out of `out`);
    (65536, 500) is the long-sum accuracy case: two launches of 32768 rows, each ~171 MMA
    accumulations of 192 rows per element."""
    if dtype == torch.float32 and d > 2048:
        pytest.skip("fp32 takes the slow FMA path; one large fp32 shape is enough")
    x = activations(n, d, dtype, device)
    out = covariance(x, None, zeros(d, device), backend=backend)
    check(out, reference(x, None), dtype, f"N={n} d={d}")


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("n,d", [(32768, 1), (65536, 8), (40000, 200)])
def test_triton_default_chunk_on_coherent_sums_gpu(dtype, n, d):
    """The Triton kernel's default chunk (192 rows) on the data where truncating tensor-core sums hurt
    most: every product positive, so each element's sum grows steadily (d = 1: one sum, no averaging
    over elements). The bound 2^-23 (K + 1) / 2 for K = 12 adds per chunk is 7.7e-7, inside 1e-6."""
    from slicekit.kernels import covariance as kcov

    x = (torch.rand(n, d, device="cuda") + 0.5).to(dtype)
    out = kcov.covariance_triton(x, None, zeros(d, "cuda"))
    ref = reference(x, None)
    check(out, ref, dtype, f"N={n} d={d}")
    assert rel_err(out, ref) <= 1e-6


@pytest.mark.parametrize("device,backend", CASES, ids=IDS)
def test_float64_input(device, backend):
    x = activations(100, 20, torch.float64, device)
    out = covariance(x, None, zeros(20, device), backend=backend)
    check(out, reference(x, None), torch.float64)


# ---------------------------------------------------------------------------------------------
# Masks, 3-D inputs, strides
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("device,backend", CASES, ids=IDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("mask_dtype", [torch.uint8, torch.bool, torch.float32, torch.int64], ids=str)
def test_mask_drops_rows(device, backend, dtype, mask_dtype):
    n, d = 257, 40
    x = activations(n, d, dtype, device)
    m = random_mask(n, device).to(mask_dtype)
    out = covariance(x, m, zeros(d, device), backend=backend)
    ref = reference(x, m.to(torch.uint8))
    check(out, ref, dtype, f"mask {mask_dtype}")
    # Dropping rows must equal removing them.
    kept = x[m.bool()]
    check(out, reference(kept, None), dtype, "mask vs removed rows")


@pytest.mark.parametrize("device,backend", CASES, ids=IDS)
def test_all_rows_masked_adds_nothing(device, backend):
    x = activations(50, 9, torch.float16, device)
    out0 = activations(9, 9, torch.float64, device, seed=3)
    out0 = out0 + out0.T
    out = covariance(x, torch.zeros(50, dtype=torch.uint8, device=device), out0.clone(), backend=backend)
    assert torch.equal(out, out0)


@pytest.mark.parametrize("device,backend", CASES, ids=IDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_3d_input_with_attention_mask(device, backend, dtype):
    b, t, d = 3, 37, 20
    x = activations(b * t, d, dtype, device).reshape(b, t, d)
    lengths = torch.tensor([37, 20, 1])
    mask = (torch.arange(t)[None, :] < lengths[:, None]).to(torch.int64).to(device)  # right padding
    out = covariance(x, mask, zeros(d, device), backend=backend)
    check(out, reference(x, mask.to(torch.uint8)), dtype, "3-D")
    out_nomask = covariance(x, None, zeros(d, device), backend=backend)
    check(out_nomask, reference(x, None), dtype, "3-D, no mask")


def _views(kind: str, n: int, d: int, dtype, device):
    if kind == "column_slice":  # a slice of a wider activation: row stride d + 11
        return activations(n, d + 11, dtype, device)[:, 5:5 + d]
    if kind == "row_step":  # every other row: row stride 2 (d + 3)
        return activations(2 * n, d + 3, dtype, device)[::2, 1:1 + d]
    if kind == "transposed":  # stride(1) != 1: the front-end must copy
        return activations(d, n, dtype, device).T
    if kind == "3d_slice":  # [B, T, d] slice of [B, T, d + 6]: reshape cannot be a view
        return activations(n, d + 6, dtype, device).reshape(n // 5, 5, d + 6)[:, :, 2:2 + d]
    raise ValueError(kind)


@pytest.mark.parametrize("device,backend", CASES, ids=IDS)
@pytest.mark.parametrize("kind", ["column_slice", "row_step", "transposed", "3d_slice"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=str)
def test_non_contiguous_input(device, backend, kind, dtype):
    n, d = 130, 45
    x = _views(kind, n, d, dtype, device)
    assert not x.is_contiguous()
    out = covariance(x, None, zeros(d, device), backend=backend)
    check(out, reference(x.contiguous(), None), dtype, kind)


# ---------------------------------------------------------------------------------------------
# Accumulation across calls
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("device,backend", CASES, ids=IDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_many_batches_accumulate(device, backend, dtype):
    d = 40
    out = zeros(d, device)
    ref = torch.zeros(d, d, dtype=torch.float64)
    for i in range(20):
        n = 16 + 13 * i
        x = activations(n, d, dtype, device, seed=i)
        m = random_mask(n, device, seed=i) if i % 3 == 0 else None
        res = covariance(x, m, out, backend=backend)
        assert res is out
        assert torch.equal(out, out.T), f"not exactly symmetric after call {i}"
        ref += reference(x, m)
    check(out, ref, dtype, "20 batches")


@pytest.mark.parametrize("device,backend", CASES, ids=IDS)
def test_adds_into_existing_accumulator(device, backend):
    d = 70
    base = activations(d, d, torch.float64, device, seed=5)
    out0 = base @ base.T
    out0 = 0.5 * (out0 + out0.T)  # exactly symmetric, like every accumulator the op leaves
    x = activations(300, d, torch.float16, device)
    out = covariance(x, None, out0.clone(), backend=backend)
    assert torch.equal(out, out.T)
    check(out - out0, reference(x, None), torch.float16, "added part")


@pytest.mark.parametrize("device,backend", CASES, ids=IDS)
def test_out_none_makes_zero_accumulator(device, backend):
    x = activations(64, 12, torch.bfloat16, device)
    out = covariance(x, backend=backend)
    assert out.shape == (12, 12) and out.dtype == torch.float64 and out.device.type == device
    check(out, reference(x, None), torch.bfloat16)


@pytest.mark.parametrize("device,backend", CASES, ids=IDS)
def test_non_contiguous_out(device, backend):
    d = 33
    x = activations(90, d, torch.float16, device)
    big = torch.zeros(d, 2 * d, dtype=torch.float64, device=device)
    out = big[:, :d]
    res = covariance(x, None, out, backend=backend)
    assert res is out
    check(out, reference(x, None), torch.float16, "strided out")
    assert torch.equal(big[:, d:], torch.zeros_like(big[:, d:]))


# ---------------------------------------------------------------------------------------------
# Triton kernel specifics (called directly: options the public op does not expose)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("device,backend", TRITON_CASES, ids=[f"{c[0]}-triton" for c in TRITON_CASES])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("chunk_rows", [64, 128, 1 << 20])
def test_triton_flush_every_chunk(device, backend, dtype, chunk_rows):
    """Short chunks flush acc -> mid many times per launch; 1 << 20 never flushes."""
    from slicekit.kernels.covariance import covariance_triton

    n, d = 1100, 40
    x = activations(n, d, dtype, device)
    m = random_mask(n, device)
    out = covariance_triton(x, m, zeros(d, device), chunk_rows=chunk_rows)
    if chunk_rows < n:
        check(out, reference(x, m), dtype, f"chunk_rows={chunk_rows}")
    else:
        # No flush: the tensor-core accumulator alone, whose truncation bias grows ~2e-8 per 16 rows
        # on a GPU (see kernels/covariance.py); only the path is checked here.
        assert torch.equal(out, out.T)
        assert rel_err(out, reference(x, m)) <= 5e-5
    with pytest.raises(ValueError, match="multiple of 64"):
        covariance_triton(x, None, zeros(d, device), chunk_rows=100)


@pytest.mark.parametrize("device,backend", TRITON_CASES, ids=[f"{c[0]}-triton" for c in TRITON_CASES])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
def test_triton_tma_and_pointer_loads(device, backend, dtype, masked):
    """Both load paths (TMA descriptor; pointer loads with the mask in the predicates) against float64;
    with a mask the TMA path gathers the kept rows first."""
    from slicekit.kernels import covariance as kcov

    n, d = 333, 48  # 48 columns: 96-byte rows, TMA-eligible; N not a multiple of any block
    x = activations(n, d, dtype, device)
    m = random_mask(n, device) if masked else None
    ref = reference(x, m)
    if device == "cuda" and torch.cuda.get_device_capability()[0] < 9:
        assert not kcov.tma_eligible(x)
    elif kcov.TensorDescriptor is not None:
        assert kcov.tma_eligible(x)
    for tma in (True, False):
        out = kcov.covariance_triton(x, m, zeros(d, device), tma=tma)
        check(out, ref, dtype, f"tma={tma}")
    odd = activations(n, 7, dtype, device)  # 14-byte rows cannot be described to TMA
    assert not kcov.tma_eligible(odd) and not kcov.tma_eligible(x.float())
    check(kcov.covariance_triton(odd, None, zeros(7, device), tma=True), reference(odd, None), dtype, "odd d")


@pytest.mark.parametrize("device,backend", TRITON_CASES, ids=[f"{c[0]}-triton" for c in TRITON_CASES])
@pytest.mark.parametrize("tma", [True, False], ids=["tma", "pointer"])
def test_triton_long_inputs_split_into_launches(device, backend, tma, monkeypatch):
    """Inputs longer than LAUNCH_ROWS go in several launches, each adding into the float64 C."""
    from slicekit.kernels import covariance as kcov

    monkeypatch.setattr(kcov, "LAUNCH_ROWS", 64)
    n, d = 300, 24
    x = activations(n, d, torch.float16, device)
    m = random_mask(n, device)
    for mask in (None, m):
        out = kcov.covariance_triton(x, mask, zeros(d, device), tma=tma)
        check(out, reference(x, mask), torch.float16, f"5 launches, mask={mask is not None}")


@pytest.mark.parametrize("device,backend", TRITON_CASES, ids=[f"{c[0]}-triton" for c in TRITON_CASES])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("tma", [True, False], ids=["tma", "pointer"])
@pytest.mark.parametrize("splits", [2, 3, 7, 1000])
def test_triton_split_rows(device, backend, dtype, tma, splits, monkeypatch):
    """Split-K: each tile's rows cut into ranges, one program each, adding into the float64 C with
    atomics (uneven ranges; 1000 is capped at the 32-row block count); masks and both load paths.
    Streaming form only: the mirrored one refuses splits. SLICEKIT_COV_TRITON_SPLITS forces them too."""
    from slicekit.kernels.covariance import covariance_triton

    n, d = 700, 80  # 80 columns: several tiles on and off the diagonal at any tile width used
    x = activations(n, d, dtype, device)
    m = random_mask(n, device)
    for mask in (None, m):
        ref = reference(x, mask)
        out = covariance_triton(x, mask, zeros(d, device), symmetric=False, tma=tma, splits=splits)
        err = upper_rel_err(out, ref)
        assert err <= TOL[dtype], f"splits={splits}, mask={mask is not None}: {err:.3e}"
    monkeypatch.setenv("SLICEKIT_COV_TRITON_SPLITS", str(splits))
    again = covariance_triton(x, None, zeros(d, device), symmetric=False, tma=tma)
    ref = reference(x, None)
    assert upper_rel_err(again, ref) <= TOL[dtype]
    # The variable leaves the mirrored form whole (exactly symmetric); asking for both is an error.
    check(covariance_triton(x, None, zeros(d, device), symmetric=True, tma=tma), ref, dtype, "mirrored, variable set")
    with pytest.raises(ValueError, match="symmetric=True"):
        covariance_triton(x, None, zeros(d, device), symmetric=True, splits=splits)
    monkeypatch.setenv("SLICEKIT_COV_TRITON_SPLITS", "two")
    with pytest.raises(ValueError, match="SLICEKIT_COV_TRITON_SPLITS must be a positive integer"):
        covariance_triton(x, None, zeros(d, device), symmetric=False)


@needs_cuda
@pytest.mark.parametrize("d", [576, 768])
def test_triton_automatic_splits_gpu(d):
    """On a GPU the streaming form splits launches with fewer tiles than SMs by itself
    (choose_splits); the result matches float64 in the upper triangle, and symmetric=True stays whole."""
    from slicekit.kernels import covariance as kcov
    from slicekit.ops import symmetrize_

    n = 16384  # on the H200 (132 SMs): 45 and 78 64-wide tiles, 2 and 3 ranges
    x = activations(n, d, torch.float16, "cuda")
    ref = reference(x, None)
    out = kcov.covariance_triton(x, None, zeros(d, "cuda"), symmetric=False)
    check(symmetrize_(out), ref, torch.float16, "split streaming form")
    check(kcov.covariance_triton(x, None, zeros(d, "cuda"), symmetric=True), ref, torch.float16, "mirrored form")


def _ptxas_available() -> bool:
    try:
        import triton.backends.nvidia as nvidia
    except ImportError:
        return False
    return os.path.exists(os.path.join(os.path.dirname(nvidia.__file__), "bin", "ptxas"))


@pytest.mark.skipif(not _ptxas_available(), reason="this Triton has no CUDA backend with ptxas")
@pytest.mark.parametrize("arch", [80, 90])
def test_triton_kernel_compiles_for_gpu_targets(arch):
    """The interpreter never runs Triton's compiler passes, where a specialisation can crash (d = 1 did
    on Triton 3.6, 6101bd7): compile the kernel for sm_80 and sm_90 with this Triton, no GPU needed
    (scripts/triton_compile_check.py --quick)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts",
                          "triton_compile_check.py")
    proc = subprocess.run([sys.executable, script, "--arch", str(arch), "--quick"], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "0 failed to compile" in proc.stdout


@pytest.mark.parametrize("device,backend", CASES, ids=IDS)
@pytest.mark.parametrize("tma", [True, False], ids=["tma", "pointer"])
def test_upper_triangle_stream_then_symmetrize(device, backend, tma):
    """symmetric=False: the upper triangle (diagonal included) accumulates; the Triton kernel skips
    the mirror writes (a lower element outside the diagonal tiles stays as it was; other backends
    may write it); symmetrize_ finishes the stream."""
    from slicekit.ops import symmetrize_

    if backend != "triton" and not tma:
        pytest.skip("the load path is a Triton option")
    n, d = 200, 80  # tiles of at most 64: element (79, 0) lies in an off-diagonal lower tile
    g = torch.Generator().manual_seed(5)
    start = torch.randn(d, d, generator=g, dtype=torch.float64)
    start = (start + start.T).to(device)
    out = start.clone()
    batches = [activations(n, d, torch.float16, device, seed=s) for s in range(3)]
    masks = [random_mask(n, device, seed=s) for s in range(3)]
    for x, m in zip(batches, masks):
        if backend == "triton":
            from slicekit.kernels.covariance import covariance_triton

            covariance_triton(x, m, out, symmetric=False, tma=tma)
        else:
            covariance(x, m, out, backend=backend, symmetric=False)
    if backend == "triton":
        assert out[d - 1, 0] == start[d - 1, 0], "the mirror must not be written"
    ref = start.cpu().clone()
    for x, m in zip(batches, masks):
        ref = ref + reference(x, m)
    assert upper_rel_err(out, ref) <= 1e-6
    symmetrize_(out)
    assert torch.equal(out, out.T)
    assert rel_err(out, ref) <= 1e-6


def test_symmetrize_rejects_non_square():
    from slicekit.ops import symmetrize_

    with pytest.raises(ValueError, match="square"):
        symmetrize_(torch.zeros(3, 4, dtype=torch.float64))


@pytest.mark.parametrize("device,backend", TRITON_CASES, ids=[f"{c[0]}-triton" for c in TRITON_CASES])
def test_triton_never_reads_dropped_rows(device, backend):
    """Padding rows may hold garbage (inf, NaN): the kernel skips them instead of multiplying by 0."""
    from slicekit.kernels.covariance import covariance_triton

    n, d = 96, 24
    x = activations(n, d, torch.float16, device)
    m = random_mask(n, device)
    x[~m.bool()] = float("nan")
    x[~m.bool(), 0] = float("inf")
    out = covariance_triton(x, m, zeros(d, device))
    assert torch.isfinite(out).all()
    check(out, reference(x[m.bool()], None), torch.float16, "NaN padding")


@pytest.mark.parametrize("device,backend", TRITON_CASES, ids=[f"{c[0]}-triton" for c in TRITON_CASES])
def test_triton_tile_enumeration_covers_triangle(device, backend):
    """Every upper tile exactly once, for tile counts that end inside and on a GROUP_M band."""
    from slicekit.kernels import covariance as kcov

    block = 32 if kcov._INTERPRET else 128
    for tiles in (1, 2, 3, 5, 9) if kcov._INTERPRET else (1, 3, 9, 17):
        d = tiles * block - 3
        x = activations(3, d, torch.float16, device)
        out = kcov.covariance_triton(x, None, zeros(d, device))
        check(out, reference(x, None), torch.float16, f"{tiles} tile rows")


# ---------------------------------------------------------------------------------------------
# Front-end errors
# ---------------------------------------------------------------------------------------------
def test_error_mask_values():
    x = activations(10, 4, torch.float16, "cpu")
    bad = torch.ones(10)
    bad[3] = 2.0
    with pytest.raises(ValueError, match="only 0 and 1"):
        covariance(x, bad)
    with pytest.raises(ValueError, match="only 0 and 1"):
        covariance(x, torch.full((10,), 0.5))


def test_error_mask_shape():
    x = activations(12, 4, torch.float16, "cpu")
    with pytest.raises(ValueError, match="does not match"):
        covariance(x, torch.ones(11, dtype=torch.uint8))
    with pytest.raises(ValueError, match="does not match"):
        covariance(x.reshape(3, 4, 4), torch.ones(12, dtype=torch.uint8))


def test_error_out_dtype_and_shape():
    x = activations(12, 4, torch.float16, "cpu")
    with pytest.raises(ValueError, match="float64"):
        covariance(x, None, torch.zeros(4, 4, dtype=torch.float32))
    with pytest.raises(ValueError, match="float64"):
        covariance(x, None, torch.zeros(5, 5, dtype=torch.float64))


def test_error_input_rank_and_dtype():
    with pytest.raises(ValueError, match="2-D"):
        covariance(torch.ones(5, dtype=torch.float16))
    with pytest.raises(TypeError, match="dtype"):
        covariance(torch.ones(5, 3, dtype=torch.int32))


def test_error_unknown_backend():
    with pytest.raises(RuntimeError, match="unknown backend"):
        covariance(activations(4, 3, torch.float16, "cpu"), backend="nope")


def test_dispatch_preference_only_for_automatic_cuda_choice(monkeypatch):
    """An op's input-dependent preference goes before its AUTO_ORDER, but only when the choice is
    automatic and on CUDA; a preferred backend that cannot run falls through to the order."""
    from slicekit.ops._dispatch import _backend_problem, resolve_backend

    op, cuda = "covariance_accumulate", torch.device("cuda")

    def boom():
        raise AssertionError("prefer consulted")

    monkeypatch.delenv("SLICEKIT_BACKEND", raising=False)
    assert resolve_backend(op, None, torch.device("cpu"), boom) == "torch"
    assert resolve_backend(op, "torch", cuda, boom) == "torch"
    monkeypatch.setenv("SLICEKIT_BACKEND", "torch")
    assert resolve_backend(op, None, cuda, boom) == "torch"
    monkeypatch.delenv("SLICEKIT_BACKEND")
    assert resolve_backend(op, None, cuda, lambda: "torch") == "torch"
    auto = resolve_backend(op, None, cuda)
    assert resolve_backend(op, None, cuda, lambda: None) == auto
    if _backend_problem(op, "cuda", cuda) is not None:  # no extension here: the preference cannot run
        assert resolve_backend(op, None, cuda, lambda: "cuda") == auto


def test_prefer_wgmma_declines_what_it_does_not_take():
    """The covariance preference never claims CPU, fp32 or masked input."""
    from slicekit.ops.covariance import _prefer_wgmma

    x = activations(8, 4, torch.float16, "cpu")
    out = torch.zeros(4, 4, dtype=torch.float64)
    assert _prefer_wgmma(x, None, out) is None
    assert _prefer_wgmma(x.float(), None, out) is None
    assert _prefer_wgmma(x, torch.ones(8, dtype=torch.uint8), out) is None


def test_empty_input_adds_nothing():
    out = covariance(torch.zeros(0, 6, dtype=torch.float16), None, torch.ones(6, 6, dtype=torch.float64))
    assert torch.equal(out, torch.ones(6, 6, dtype=torch.float64))


# ---------------------------------------------------------------------------------------------
# Benchmark plumbing (CPU, interpreter): the table the GPU numbers are read through
# ---------------------------------------------------------------------------------------------
@pytest.mark.skipif(("cpu", "triton") not in CASES, reason="needs the Triton interpreter on the CPU")
def test_benchmark_rows_cpu():
    import importlib.util
    import os
    import sys

    bench_dir = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
    sys.path.insert(0, bench_dir)
    try:
        path = os.path.join(bench_dir, "bench_covariance.py")
        spec = importlib.util.spec_from_file_location("_bench_covariance", path)
        bc = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(bc)
    finally:
        sys.path.remove(bench_dir)

    def timer(fn, **kw):
        fn()
        return (1.0, 0.9, 1.1)

    rows = bc.measure_shape("tiny", 40, 96, torch.float16, device="cpu", timer=timer, with_mask=True)
    by = {r["provider"]: r for r in rows}
    assert set(by) == {"triton", "triton_sym", "triton_mask", "symmetrize", "cuda", "torch_gemm", "torch_fp64"}
    assert all(by[p]["rel_err"] <= 1e-6 for p in ("triton", "triton_sym", "triton_mask"))
    assert by["triton"]["tflops"] == pytest.approx(96 * 40 * 41 / 1e-3 / 1e12)
    assert by["triton"]["speedup_vs_gemm"] == 1.0 and by["torch_fp64"]["rel_err"] == 0.0
    table = bc.markdown_table(bc.summarize(rows), bc.SUMMARY_COLS)
    assert "| tiny | 40 | 96 | float16 |" in table
    chunks = bc.measure_chunks(40, 96, torch.float16, device="cpu", timer=timer, chunks=(64,))
    assert [c["flush"] for c in chunks][:2] == ["every 64 rows", "never"]
    assert all(c["rel_err"] <= 1e-6 for c in chunks[:2])
