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


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long test (real model); still run in CI")
    config.addinivalue_line("markers", "cuda: needs a CUDA GPU; skipped cleanly without one")
