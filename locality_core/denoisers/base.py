"""The denoiser contract: every denoiser here is a `Denoiser`, called as ``D(x, sigma) -> x0_hat``.

Glossary
    x           noisy images (B, C, H, W), any float dtype, any device; B may be 0 (an empty batch comes back)
    sigma       the noise level: a Python float, a 0-d tensor, or a (B,) tensor (one level per image). A (B,)
                sigma gives what a loop over the images with their scalar sigmas gives
    x0_hat      the estimate of the clean images: x's shape, dtype and device
    fit         ``fit(dataset) -> self``: learn from a `Dataset` (its ``train`` images, its statistics). A
                Dataset is the one input kind. Tensors become one with ``Dataset.from_tensor(train, stats=None)``
                (a shard, a subset, a test's toy data: no fingerprint, so nothing derived from it is cached on
                disk; ``stats`` replaces the statistics computed from ``train``). A prior given by its statistics
                alone has an alternate constructor (``WienerDenoiser.from_stats``, like
                ``nn.Embedding.from_pretrained``); a network trained elsewhere (the UNet) has no fit
    learned     state set by fit, names ending in ``_`` (``train_``, ``mean_``), listed in ``learned``: registered
                buffers, so ``.to(device)``, ``.double()`` move them; None until fitted
    fitted      every learned buffer set; calling an unfitted denoiser raises `NotFittedError`
    linear      a `LinearDenoiser` is affine in x, D = J(sigma) x + c(sigma): it gives rows of J in closed form
                (``jacobian_rows``) and the eigenpairs of (J + J^T) / 2 (``jacobian_eigh``), so fields and bases
                need no autograd (its registry entry sets ``DenoiserSpec.linear``)
    by_sigma    for denoisers that work one noise level at a time: the batch grouped by level
    shard       one process's part of a training set split over processes (`Shard`, made by `distributed.py`).
                ``fit_shard(shard) -> self`` fits a denoiser so that every process gets the outputs of the
                denoiser fitted to all shards; the softmax denoisers (optimal, analytical, LS) can, the others
                refuse and say why
    sigma_key   sigma rounded to 6 significant digits: float32 and float64 copies of one level are one level

Example
    den = LSDenoiser(patch_size=3).fit(load_dataset("fashion-mnist"))   # or .fit(Dataset.from_tensor(train))
    x0_hat = den(x, torch.tensor([0.1, 1.0]))                           # one sigma per image of x (2, 1, 28, 28)

Rules every denoiser keeps: no ``torch.no_grad`` inside (Jacobians go through it; samplers and entry points
decide); batch elements never mix (one backward pass gives one Jacobian row per image); device and dtype come
from x, never chosen inside forward.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from locality_core.data import Dataset
from locality_core.denoisers.softmax import ShardMerge
from locality_core.stats.covariance import DataStats, compute_stats, get_stats


class NotFittedError(RuntimeError):
    """A data-dependent denoiser was called before ``fit``."""


@dataclass(frozen=True)
class Shard:
    """One process's part of a training set split over processes, as a denoiser fits to it (`fit_shard`).

    ``mean`` and ``stats`` are collectives: every process calls them, in the same order (the same denoisers
    fitted in the same order do), and only denoisers that need them do.
    """

    images: torch.Tensor                # (n, C, H, W) this process's training images, disjoint from the others'
    merge: ShardMerge                   # merges a softmax state over ``images`` with the other shards' states
    mean: Callable[[], torch.Tensor]    # -> (C, H, W) float64 mean image of all shards
    stats: Callable[[], DataStats]      # -> the statistics of all shards


class Denoiser(nn.Module):
    """D(x, sigma) -> x0_hat. Subclasses implement ``forward`` and, when they learn from data, ``fit`` (setting
    the buffers named in ``learned``)."""

    learned: tuple[str, ...] = ()

    def __init__(self):
        super().__init__()
        for name in self.learned:
            self.register_buffer(name, None)

    def fit(self, dataset: Dataset) -> Denoiser:
        raise NotImplementedError(f"{type(self).__name__} learns nothing from a data set: it has no fit")

    def fit_shard(self, shard: Shard) -> Denoiser:
        """Fit to one process's ``shard`` so that this process gets the outputs of the denoiser fitted to all
        shards together (the softmax denoisers: optimal, analytical, LS)."""
        raise TypeError(f"{type(self).__name__} cannot be sharded (optimal, analytical and LS can)")

    @property
    def fitted(self) -> bool:
        return all(getattr(self, name) is not None for name in self.learned)

    def check_fitted(self) -> None:
        if not self.fitted:
            raise NotFittedError(f"{type(self).__name__} is not fitted: call .fit(dataset) first")

    def forward(self, x: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class LinearDenoiser(Denoiser):
    """A denoiser affine in x: D(x, sigma) = J(sigma) x + c(sigma), J independent of x."""

    def jacobian_rows(self, indices: list[int], sigmas: list[float]) -> np.ndarray:
        """Rows ``indices`` of J at each sigma: (S, len(indices), d), float64."""
        raise NotImplementedError

    def jacobian_eigh(self, sigma: float) -> tuple[np.ndarray, np.ndarray, float]:
        """Eigenvalues (d,) descending and eigenvectors (d, d) (columns) of (J + J^T) / 2, and the asymmetry
        ||J - J^T||_F / ||J||_F, float64. Default: from all rows of J."""
        J = self.jacobian_rows(list(range(self.d)), [sigma])[0]
        vals, vecs = np.linalg.eigh((J + J.T) / 2)
        order = np.argsort(vals)[::-1]
        norm = np.linalg.norm(J)
        asym = float(np.linalg.norm(J - J.T) / norm) if norm > 0 else 0.0
        return vals[order], np.ascontiguousarray(vecs[:, order]), asym

    @property
    def d(self) -> int:
        c, h, w = self.shape
        return c * h * w


def stats_of(dataset: Dataset) -> DataStats:
    """The statistics a denoiser fits to: those given with the data set (`Dataset.from_tensor`), else the
    cached ones of its fingerprint, else (no fingerprint) computed from its training images, not cached."""
    if dataset.stats is not None:
        return dataset.stats
    return get_stats(dataset) if dataset.fingerprint else compute_stats(dataset.train)


def as_batch_sigma(sigma: float | torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A scalar or (B,) sigma as a (B,) tensor on x's device and dtype."""
    s = torch.as_tensor(sigma, device=x.device, dtype=x.dtype)
    if s.ndim == 0:
        s = s.expand(x.shape[0])
    if s.shape != (x.shape[0],):
        raise ValueError(f"sigma must be a scalar or of shape ({x.shape[0]},), got {tuple(s.shape)}")
    return s


def sigma_key(sigma: float) -> float:
    """sigma rounded to 6 significant digits: float32 and float64 copies of one noise level share a mask."""
    return float(f"{float(sigma):.6g}")


def by_sigma(x: torch.Tensor, sigma: float | torch.Tensor,
             denoise: Callable[[torch.Tensor, float], torch.Tensor], key: Callable[[float], float] = float
             ) -> torch.Tensor:
    """``denoise(x_group, level)`` applied to the inputs of each distinct noise level ``key(sigma_b)``, the
    results in the input order: for denoisers that work one noise level at a time. No inputs, no calls."""
    if len(x) == 0:
        return x.clone()
    levels = [key(s) for s in as_batch_sigma(sigma, x).tolist()]
    outs, order = [], []
    for level in dict.fromkeys(levels):
        idx = [i for i, v in enumerate(levels) if v == level]
        outs.append(denoise(x[idx], level))
        order += idx
    return outs[0] if len(outs) == 1 else torch.cat(outs)[torch.argsort(torch.tensor(order))]
