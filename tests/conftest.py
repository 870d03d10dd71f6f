"""Test configuration: Triton runs on the CPU through its interpreter when no GPU is present.

TRITON_INTERPRET must be set before triton.jit decorates any kernel, so it is set here, at
collection time, before any slicekit.kernels module is imported.
"""
import os

try:
    import torch

    _HAS_CUDA = torch.cuda.is_available()
except Exception:  # pragma: no cover
    _HAS_CUDA = False

if not _HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from tiny_models import ARCHS, calib_ids, tiny_model  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="module", params=ARCHS)
def arch_model(request):
    """(arch, tiny float64 model, calibration ids, its dense logits) for every supported family."""
    model = tiny_model(request.param)
    ids = calib_ids()
    with torch.no_grad():
        ref = model(ids).logits
    return request.param, model, ids, ref


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long test (real model); still run in CI")
    config.addinivalue_line("markers", "cuda: needs a CUDA GPU; skipped cleanly without one")
