"""Public hot ops of slicekit, each with CUDA / Triton / PyTorch-reference backends."""
from ._dispatch import BACKENDS, available_backends, resolve_backend
from .covariance import covariance, covariance_ref, symmetrize_
from .rotate_slice import rotate_slice, rotate_slice_ref
from .shortcut_linear import shortcut_linear, shortcut_linear_ref

__all__ = [
    "BACKENDS",
    "available_backends",
    "resolve_backend",
    "covariance",
    "covariance_ref",
    "symmetrize_",
    "rotate_slice",
    "rotate_slice_ref",
    "shortcut_linear",
    "shortcut_linear_ref",
]
