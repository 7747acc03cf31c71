"""The eigenvalue spectrum of a data set: power-law fit and variance shares.

Glossary
    lambda_k     k-th largest eigenvalue of the data covariance (k from 1)
    power law    lambda_k ~ A k^(-beta): natural images have beta near 1 to 2 (their 1/f^alpha power spectrum
                 shows up as a power law in ranked eigenvalues); the fit is least squares on log lambda against
                 log k at log-spaced ranks, so each decade of k counts the same, between ``k_min`` and the rank
                 holding ``share`` of the variance (beyond it the spectrum drops into a noise floor)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from locality_core.stats.covariance import DataStats, components_for_variance


@dataclass(frozen=True)
class PowerLawFit:
    amplitude: float   # A
    beta: float        # decay exponent
    k_min: int         # fitted ranks k_min .. k_max (1-based)
    k_max: int
    r2: float          # coefficient of determination of the log-log fit

    def __call__(self, k: np.ndarray) -> np.ndarray:
        return self.amplitude * np.asarray(k, dtype=np.float64) ** (-self.beta)


def power_law_fit(eigvals: np.ndarray, k_min: int = 2, k_max: int | None = None, share: float = 0.99,
                  points: int = 64) -> PowerLawFit:
    """Fit lambda_k = A k^(-beta) to descending eigenvalues over ranks k_min .. k_max (default: the rank that
    holds ``share`` of the variance), at up to ``points`` log-spaced ranks."""
    lam = np.asarray(eigvals, dtype=np.float64)
    if k_max is None:
        k_max = components_for_variance(lam, share)
    k_max = int(min(k_max, np.count_nonzero(lam > 0)))
    k_min = int(max(1, min(k_min, k_max - 2)))
    if k_max - k_min < 2:
        raise ValueError(f"need at least 3 positive eigenvalues to fit a power law, got ranks {k_min}..{k_max}")
    ks = np.unique(np.round(np.geomspace(k_min, k_max, points)).astype(int))
    x, y = np.log(ks), np.log(lam[ks - 1])
    slope, intercept = np.polyfit(x, y, 1)
    residual = y - (slope * x + intercept)
    total = np.sum((y - y.mean()) ** 2)
    r2 = 1.0 - float(np.sum(residual**2) / total) if total > 0 else 1.0
    return PowerLawFit(float(np.exp(intercept)), float(-slope), k_min, k_max, r2)


def variance_share(eigvals: np.ndarray) -> np.ndarray:
    """(d,) share of the total variance held by the first k components, k = 1 .. d."""
    lam = np.asarray(eigvals, dtype=np.float64)
    return np.cumsum(lam) / lam.sum()


def correlation_row(stats: DataStats, pixel: tuple[int, int], channel: int = 0) -> np.ndarray:
    """(C, H, W) correlation of pixel (row, col) in ``channel`` with every input coordinate: one row of
    Sigma[m, n] / sqrt(Sigma[m, m] Sigma[n, n]) (variances below 1e-12 count as 1e-12), without forming the
    whole correlation matrix."""
    c, h, w = stats.shape
    m = channel * h * w + int(pixel[0]) * w + int(pixel[1])
    std = np.sqrt(np.clip(np.diag(stats.cov), 1e-12, None))
    return (stats.cov[m] / (std[m] * std)).reshape(c, h, w)
