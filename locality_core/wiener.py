"""The linear (Wiener) denoiser: the posterior mean under a Gaussian prior N(mu, Sigma).

Glossary
    gain_i(sigma)   lambda_i / (lambda_i + sigma^2): how much of principal component i survives denoising
    P_sigma         U diag(gain) U^T, the denoiser's matrix and its Jacobian (input-independent)
    D_W(x, sigma)   mu + P_sigma (x - mu)
    field of m      row m of P_sigma: how output pixel m depends on every input pixel (signed)

It is also the best affine denoiser in mean squared error (see `linear_fit.py` for that experiment).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .data import Dataset
from .stats import DataStats, compute_stats, get_stats
from .unet import as_batch_sigma


def wiener_gain(eigvals: np.ndarray | torch.Tensor, sigma: float) -> np.ndarray | torch.Tensor:
    """(d,) shrinkage factors lambda / (lambda + sigma^2)."""
    return eigvals / (eigvals + sigma**2)


def wiener_matrix(eigvecs: np.ndarray, eigvals: np.ndarray, sigma: float) -> np.ndarray:
    """(d, d) P_sigma = U diag(gain) U^T, float64."""
    return (eigvecs * wiener_gain(eigvals, sigma)) @ eigvecs.T


def wiener_rows(stats: DataStats, indices: list[int], sigmas: list[float]) -> np.ndarray:
    """Rows ``indices`` of P_sigma for each sigma: (S, len(indices), d), float64, without forming P."""
    u_rows = stats.eigvecs[indices]  # (k, d)
    return np.stack([(u_rows * wiener_gain(stats.eigvals, s)) @ stats.eigvecs.T for s in sigmas])


def passing_components(eigvals: np.ndarray, sigma: float) -> int:
    """Number of components whose signal-to-noise ratio lambda / sigma^2 exceeds 1."""
    return int((np.asarray(eigvals) > sigma**2).sum())


class WienerDenoiser(nn.Module):
    """D(x, sigma) = mu + P_sigma (x - mu). Fit with ``WienerDenoiser().fit(dataset_or_stats)``."""

    def __init__(self):
        super().__init__()
        self.shape: tuple[int, int, int] | None = None
        for name in ("mean_", "eigvals_", "eigvecs_"):
            self.register_buffer(name, torch.empty(0, dtype=torch.float64))

    def fit(self, data: Dataset | DataStats | torch.Tensor) -> WienerDenoiser:
        """``data``: a Dataset (cached statistics), DataStats, or a tensor (N, C, H, W) of training images."""
        if isinstance(data, Dataset):
            stats = get_stats(data)
        elif isinstance(data, DataStats):
            stats = data
        else:
            stats = compute_stats(data)
        self.shape = tuple(stats.shape)
        self.mean_ = torch.from_numpy(stats.mean)
        self.eigvals_ = torch.from_numpy(stats.eigvals)
        self.eigvecs_ = torch.from_numpy(stats.eigvecs)
        self._cast: dict = {}
        return self

    def _check_fitted(self) -> None:
        if self.shape is None:
            raise RuntimeError("WienerDenoiser is not fitted: call .fit(data) first")

    def gain(self, sigma: float) -> torch.Tensor:
        """(d,) float64 shrinkage factors at ``sigma``."""
        self._check_fitted()
        return wiener_gain(self.eigvals_, float(sigma))

    def P(self, sigma: float) -> torch.Tensor:
        """(d, d) float64 denoising matrix at ``sigma``."""
        self._check_fitted()
        return (self.eigvecs_ * self.gain(sigma)) @ self.eigvecs_.T

    def _buffers_as(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        key = (x.dtype, x.device)
        if key not in self._cast:
            self._cast[key] = tuple(b.to(device=x.device, dtype=x.dtype) for b in
                                    (self.mean_, self.eigvals_, self.eigvecs_))
        return self._cast[key]

    def forward(self, x: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W), sigma scalar or (B,) -> x0_hat (B, C, H, W), in x's dtype and device."""
        self._check_fitted()
        mean, eigvals, eigvecs = self._buffers_as(x)
        sigma = as_batch_sigma(sigma, x)
        coeffs = (x.flatten(1) - mean) @ eigvecs                    # (B, d) principal coordinates
        gains = eigvals[None] / (eigvals[None] + sigma[:, None] ** 2)  # (B, d)
        return (mean + (coeffs * gains) @ eigvecs.T).view_as(x)
