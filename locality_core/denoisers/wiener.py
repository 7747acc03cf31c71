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

from locality_core.data import Dataset
from locality_core.denoisers.base import LinearDenoiser, as_batch_sigma, stats_of
from locality_core.stats.covariance import DataStats


def wiener_gain(eigvals: np.ndarray | torch.Tensor, sigma: float) -> np.ndarray | torch.Tensor:
    """(d,) shrinkage factors lambda / (lambda + sigma^2)."""
    return eigvals / (eigvals + sigma**2)


def wiener_matrix(eigvecs: np.ndarray, eigvals: np.ndarray, sigma: float) -> np.ndarray:
    """(d, d) P_sigma = U diag(gain) U^T, float64."""
    return (eigvecs * wiener_gain(eigvals, sigma)) @ eigvecs.T


def wiener_rows(stats: DataStats, indices: list[int], sigmas: list[float]) -> np.ndarray:
    """Rows ``indices`` of P_sigma for each sigma: (S, len(indices), d), float64, without forming P."""
    return _rows(stats.eigvecs, stats.eigvals, indices, sigmas)


def _rows(eigvecs: np.ndarray, eigvals: np.ndarray, indices: list[int], sigmas: list[float]) -> np.ndarray:
    u_rows = eigvecs[indices]  # (k, d)
    return np.stack([(u_rows * wiener_gain(eigvals, s)) @ eigvecs.T for s in sigmas])


def passing_components(eigvals: np.ndarray, sigma: float) -> int:
    """Number of components whose signal-to-noise ratio lambda / sigma^2 exceeds 1."""
    return int((np.asarray(eigvals) > sigma**2).sum())


class WienerDenoiser(LinearDenoiser):
    """D(x, sigma) = mu + P_sigma (x - mu). ``WienerDenoiser().fit(dataset)`` (its statistics, see
    `denoiser.stats_of`), or ``WienerDenoiser.from_stats(stats)`` for a Gaussian prior given by its statistics.
    Learned (float64 buffers): mean_ (d,), eigvals_ (d,), eigvecs_ (d, d)."""

    learned = ("mean_", "eigvals_", "eigvecs_")

    def __init__(self):
        super().__init__()
        self.shape: tuple[int, int, int] | None = None
        self._cast: tuple | None = None  # ((dtype, device), buffers, their casts)

    def fit(self, dataset: Dataset) -> WienerDenoiser:
        return self._set(stats_of(dataset))

    @classmethod
    def from_stats(cls, stats: DataStats) -> WienerDenoiser:
        """The posterior mean under N(stats.mean, stats.cov): a fitted denoiser without a data set."""
        return cls()._set(stats)

    def _set(self, stats: DataStats) -> WienerDenoiser:
        self.shape = tuple(stats.shape)
        self.mean_ = torch.from_numpy(stats.mean)
        self.eigvals_ = torch.from_numpy(stats.eigvals)
        self.eigvecs_ = torch.from_numpy(stats.eigvecs)
        self._cast = None
        return self

    def gain(self, sigma: float) -> torch.Tensor:
        """(d,) shrinkage factors at ``sigma``, in the buffers' dtype (float64)."""
        self.check_fitted()
        return wiener_gain(self.eigvals_, float(sigma))

    def P(self, sigma: float) -> torch.Tensor:
        """(d, d) denoising matrix at ``sigma``, in the buffers' dtype (float64)."""
        self.check_fitted()
        return (self.eigvecs_ * self.gain(sigma)) @ self.eigvecs_.T

    def jacobian_rows(self, indices: list[int], sigmas: list[float]) -> np.ndarray:
        """Rows ``indices`` of P_sigma for each sigma: (S, len(indices), d), float64 (`wiener_rows`)."""
        self.check_fitted()
        return _rows(_numpy64(self.eigvecs_), _numpy64(self.eigvals_), indices, list(sigmas))

    def jacobian_eigh(self, sigma: float) -> tuple[np.ndarray, np.ndarray, float]:
        """P_sigma is symmetric with the data's principal components as eigenvectors: (gains, U, 0)."""
        self.check_fitted()
        eigvecs, eigvals = _numpy64(self.eigvecs_), _numpy64(self.eigvals_)
        return wiener_gain(eigvals, sigma), eigvecs, 0.0

    def _buffers_as(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The buffers in x's dtype and device, cast once per (dtype, device) and buffers (``.to()`` replaces
        the buffers, and so invalidates the casts)."""
        buffers = (self.mean_, self.eigvals_, self.eigvecs_)
        hit = self._cast is not None and self._cast[0] == (x.dtype, x.device) and \
            all(a is b for a, b in zip(self._cast[1], buffers, strict=True))
        if not hit:
            self._cast = ((x.dtype, x.device), buffers, tuple(b.to(device=x.device, dtype=x.dtype) for b in buffers))
        return self._cast[2]

    def forward(self, x: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W), sigma scalar or (B,) -> x0_hat (B, C, H, W), in x's dtype and device."""
        self.check_fitted()
        mean, eigvals, eigvecs = self._buffers_as(x)
        sigma = as_batch_sigma(sigma, x)
        coeffs = (x.flatten(1) - mean) @ eigvecs                    # (B, d) principal coordinates
        gains = eigvals[None] / (eigvals[None] + sigma[:, None] ** 2)  # (B, d)
        return (mean + (coeffs * gains) @ eigvecs.T).view_as(x)


def _numpy64(t: torch.Tensor) -> np.ndarray:
    """A float64 numpy view of a CPU float64 buffer (the statistics' own array), else a copy."""
    return t.detach().cpu().to(torch.float64).numpy()
