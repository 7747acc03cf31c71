"""Geometry-adaptive harmonic bases (Kadkhodaie et al., ICLR 2024): the Jacobian's eigen-view of a denoiser.

Glossary
    J             full Jacobian dD(y, sigma)/dy at one noisy image y, (d, d), row m = output coordinate m
    symmetrised   (J + J^T) / 2; a denoiser that is a gradient (the posterior mean) has a symmetric J
    eigvals       shrinkage factors (mostly in [0, 1]), descending; their sum tr J is the effective
                  dimensionality the denoiser keeps at this sigma
    eigvecs       an image-adapted basis (columns); for the Wiener denoiser J = P_sigma exactly, so the
                  eigenvectors are the principal components and eigvals = lambda / (lambda + sigma^2),
                  the same for every image: the contrast with a network is the point
    asymmetry     ||J - J^T||_F / ||J||_F, how far the network is from a conservative field
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .stats import DataStats
from .wiener import wiener_gain


@dataclass(frozen=True, eq=False)
class JacobianBasis:
    sigma: float
    eigvals: np.ndarray    # (d,) descending
    eigvecs: np.ndarray    # (d, d) columns
    trace: float           # tr J (= sum of eigvals)
    asymmetry: float
    shape: tuple[int, int, int]

    def eigenimages(self, k: int) -> np.ndarray:
        """(k, C, H, W) leading eigenvectors as images."""
        return self.eigvecs[:, :k].T.reshape(k, *self.shape)


def full_jacobian(denoiser, y: torch.Tensor, sigma: float, batch: int = 256) -> torch.Tensor:
    """(d, d) Jacobian of ``denoiser`` at one image ``y`` (C, H, W), by batched vector-Jacobian products:
    ``batch`` copies of y go through the network at once, each pulling back one unit output vector."""
    d = y.numel()
    rows = []
    for start in range(0, d, batch):
        idx = torch.arange(start, min(d, start + batch))
        ys = y.detach().unsqueeze(0).repeat(len(idx), 1, 1, 1).requires_grad_(True)
        with torch.enable_grad():
            out = denoiser(ys, float(sigma)).reshape(len(idx), d)
            onehot = torch.zeros_like(out)
            onehot[torch.arange(len(idx)), idx] = 1.0
            (grad,) = torch.autograd.grad(out, ys, grad_outputs=onehot)
        rows.append(grad.reshape(len(idx), d).detach())
    return torch.cat(rows)


def basis_from_jacobian(J: np.ndarray, sigma: float, shape: tuple[int, int, int]) -> JacobianBasis:
    J = np.asarray(J, dtype=np.float64)
    sym = (J + J.T) / 2
    vals, vecs = np.linalg.eigh(sym)
    order = np.argsort(vals)[::-1]
    norm = np.linalg.norm(J)
    asym = float(np.linalg.norm(J - J.T) / norm) if norm > 0 else 0.0
    return JacobianBasis(float(sigma), vals[order], np.ascontiguousarray(vecs[:, order]), float(np.trace(J)), asym,
                         tuple(shape))


def jacobian_basis(denoiser, y: torch.Tensor, sigma: float, batch: int = 256) -> JacobianBasis:
    """Eigendecomposition of the symmetrised Jacobian of ``denoiser`` at ``y`` (C, H, W)."""
    J = full_jacobian(denoiser, y, sigma, batch).double().numpy()
    return basis_from_jacobian(J, sigma, tuple(y.shape))


def wiener_basis(stats: DataStats, sigma: float) -> JacobianBasis:
    """The exact Wiener counterpart: principal components with gains lambda / (lambda + sigma^2)."""
    gains = wiener_gain(stats.eigvals, sigma)  # descending, like the eigenvalues: gain is monotone in lambda
    return JacobianBasis(float(sigma), gains, stats.eigvecs, float(gains.sum()), 0.0, tuple(stats.shape))


def denoiser_basis(dataset, name: str, image_index: int, sigma: float, *, seed: int = 0, cache=None
                   ) -> tuple[JacobianBasis, np.ndarray]:
    """Basis of registered denoiser ``name`` at test image ``image_index`` plus noise from ``seed``.

    Returns the basis and the noisy image y (C, H, W). Wiener is exact and instant; others are cached on
    disk by (data, denoiser id, image, sigma, seed).
    """
    from .cache import default_cache
    from .denoisers import denoiser_cache_id, get_denoiser
    from .stats import get_stats

    if not 0 <= image_index < len(dataset.test):
        raise ValueError(f"image index {image_index} is outside the test set (0..{len(dataset.test) - 1})")
    x0 = dataset.test[image_index]
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
    y = x0 + float(sigma) * noise
    if name == "wiener":
        return wiener_basis(get_stats(dataset), sigma), y.numpy()
    cache = cache or default_cache()
    key = cache.make_key("basis", dataset.fingerprint, denoiser_cache_id(name, dataset), image_index,
                         f"{float(sigma):.6g}", seed)

    def compute():
        return {"J": full_jacobian(get_denoiser(name, dataset), y, sigma).double().numpy()}

    J = cache.get_or_compute(key, compute)["J"]
    return basis_from_jacobian(J, sigma, dataset.shape), y.numpy()
