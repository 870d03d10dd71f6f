"""Rotations from calibration second moments: eigh in float64, eigenvalues descending."""
from __future__ import annotations

import torch


def pca_basis(cov: torch.Tensor, damp: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenbasis of a float64 second-moment matrix.

    Args:
        cov: [d, d] float64, symmetric positive semi-definite (X^T X summed over tokens).
        damp: diagonal damping as a fraction of mean(diag(cov)); shifts every eigenvalue by the
            same amount, so it conditions eigh without changing the basis or the order.

    Returns:
        (Q, eigvals): Q [d, d] float64 orthogonal, columns sorted by decreasing eigenvalue;
        eigvals [d] float64 of the UNdamped matrix, descending (clamped at 0).
    """
    if cov.dtype != torch.float64:
        raise TypeError(f"pca_basis expects a float64 matrix (PCA precision matters), got {cov.dtype}")
    shift = damp * cov.diagonal().mean()
    damped = cov + shift * torch.eye(cov.shape[0], dtype=cov.dtype, device=cov.device)
    eigvals, eigvecs = _eigh(damped)
    order = torch.argsort(eigvals, descending=True)
    return eigvecs[:, order].contiguous(), (eigvals[order] - shift).clamp_min(0)


def random_orthogonal(d: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """Haar-random orthogonal [d, d] float64 matrix (QR with the sign fix)."""
    a = torch.randn(d, d, dtype=torch.float64, generator=generator)
    q, r = torch.linalg.qr(a)
    q = q * torch.sign(torch.diagonal(r)).unsqueeze(0)
    return q.to(device) if device is not None else q


def explained_variance(eigvals: torch.Tensor, k: int) -> float:
    """Fraction of the second moment kept by the first k directions (1 - discarded mass)."""
    total = float(eigvals.sum())
    return float(eigvals[:k].sum()) / total if total > 0 else 1.0


def _eigh(a: torch.Tensor):
    # On the CPU, LAPACK's threaded eigh spins its threads against each other when the cores are
    # busy (measured: 2 s instead of 0.08 s for d=576 on a loaded 2-core machine); small matrices
    # gain nothing from threads, so run them on one.
    if a.device.type != "cpu" or a.shape[0] > 2048:
        return torch.linalg.eigh(a)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return torch.linalg.eigh(a)
    finally:
        torch.set_num_threads(threads)
