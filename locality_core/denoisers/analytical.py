"""The paper's analytical denoiser (Lukoianov et al. 2025, METHODS.md section 5): one softmax over all training
images per output coordinate, each coordinate with its own neighbourhood read off the data's Wiener matrix.

At each sigma:
    P           P_sigma = U diag(gain) U^T, the Wiener matrix (float64)
    M           P normalised row by row by its diagonal: M[n, m] = P[n, m] / P[n, n] (|P[n, n]| < 1e-6 -> 1)
    theta       binarisation threshold relative to max|M| ("global", the paper's) or to each row's max ("row")
    mask        B[n, m] = |M[n, m]| >= threshold, (d, d) bool; column m is the neighbourhood of output m
    dist_k[m]   sum_n B[n, m] (x[n] - x0_k[n])^2
    x0_hat[m]   sum_k softmax_k(-dist_k[m] / (2 sigma^2)) x0_k[m]  (exact streaming softmax over all N)

Glossary
    dense       `analytical_dense`: the formula as written, B * N * d * d multiply-adds per call; the yardstick
    engine      `masked_engine`: the same formula as a few dense GEMMs per chunk of training images over the
                parts of the mask that matter (the denoiser classes here run on it)
    batch-normalised  the public reference code's variant: the softmax normalised within each batch of 512
                training images, the batch results then averaged. It is NOT the formula above; it exists
                for comparison only (`analysis.metrics.per_batch_difference` measures by how much they differ)

Masks depend only on (data, sigma, theta, threshold mode): computed once in float64 and cached on disk.
Beware the global threshold's fragility (METHODS.md section 10): max|M| comes from near-constant border
pixels; the per-row threshold is the robust option.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch

from locality_core.data import Dataset
from locality_core.denoisers.base import Denoiser, Shard, by_sigma, sigma_key, stats_of
from locality_core.denoisers.masked_engine import (
    PLAN_BATCH,
    REFERENCE_BATCH,
    MaskPlan,
    masked_softmax_denoise,
    plan_batch,
    plan_mask,
)
from locality_core.denoisers.softmax import ShardMerge, SoftmaxState, finish, merge_states
from locality_core.denoisers.wiener import wiener_matrix
from locality_core.stats.covariance import DataStats, mean_float64
from locality_core.store.cache import ArrayCache, cache_kind, default_cache

DIAG_EPS = 1e-6
THRESHOLD_MODES = ("global", "row")
MASKS = cache_kind("analytical-mask")


def analytical_dense(x: torch.Tensor, sigma: float, train: torch.Tensor, mask: np.ndarray | torch.Tensor, *,
                     chunk_size: int = REFERENCE_BATCH, batch_normalised: bool = False) -> torch.Tensor:
    """The formula as written (the public code's per-batch einsum form), exact softmax by default.

    x (B, C, H, W) or (B, d), train (N, ...), mask (d, d) -> x0_hat shaped like x. The yardstick of the
    engine: same formula, dense (B * chunk * d * d multiply-adds per chunk).
    """
    xf = x.flatten(1)
    maskf = torch.as_tensor(np.asarray(mask), dtype=xf.dtype, device=xf.device)
    train = train.reshape(len(train), -1)
    total, results = None, []
    for start in range(0, len(train), chunk_size):
        x0 = train[start:start + chunk_size].to(xf)
        delta = (xf[:, None, :] - x0[None]) ** 2                               # (B, K, d)
        logits = -torch.einsum("bkn,nm->bkm", delta, maskf) / (2.0 * sigma**2)  # (B, K, d)
        m = logits.amax(dim=1)
        p = torch.exp(logits - m[:, None])
        state = SoftmaxState(m, p.sum(1), (p * x0).sum(1))
        if batch_normalised:
            results.append(finish(state))
        else:
            total = state if total is None else merge_states(total, state)
    out = torch.stack(results).mean(0) if batch_normalised else finish(total)
    return out.view_as(x)


# ---------------------------------------------------------------- masks

def default_theta(shape: tuple[int, int, int]) -> float:
    """The paper's thresholds: 0.005 for grayscale (28x28x1), 0.05 for 32x32x3, 0.02 for 64x64x3.

    Any grayscale size gets 0.005; colour images interpolate between 0.05 at side 32 and 0.02 at side 64 in
    log side length (held constant outside that range).
    """
    c, h, w = shape
    if c == 1:
        return 0.005
    frac = min(1.0, max(0.0, math.log2(math.sqrt(h * w) / 32)))
    return 0.05 * (0.02 / 0.05) ** frac


def normalised_wiener(stats: DataStats, sigma: float) -> np.ndarray:
    """(d, d) M = P_sigma / diag(P_sigma), row by row, float64."""
    P = wiener_matrix(stats.eigvecs, stats.eigvals, sigma)
    diag = np.diag(P).copy()
    diag[np.abs(diag) < DIAG_EPS] = 1.0
    return P / diag[:, None]


def mask_and_max(stats: DataStats, sigma: float, theta: float | None = None, mode: str = "global"
                 ) -> tuple[np.ndarray, float]:
    """(d, d) bool mask B (column m = neighbourhood of output m) and max|M|, all in float64."""
    if mode not in THRESHOLD_MODES:
        raise ValueError(f"threshold mode must be one of {THRESHOLD_MODES}, got {mode!r}")
    theta = default_theta(stats.shape) if theta is None else float(theta)
    A = np.abs(normalised_wiener(stats, sigma))
    top = float(A.max())
    limit = theta * (top if mode == "global" else A.max(axis=1, keepdims=True))
    return A >= limit, top


def analytical_mask(stats: DataStats, sigma: float, theta: float | None = None, mode: str = "global") -> np.ndarray:
    """(d, d) bool mask of the analytical denoiser at ``sigma`` (see `mask_and_max`)."""
    return mask_and_max(stats, sigma, theta, mode)[0]


def cached_mask(stats: DataStats, sigma: float, theta: float | None = None, mode: str = "global", *,
                cache: ArrayCache | None | bool = None) -> tuple[np.ndarray, float]:
    """`mask_and_max` at ``sigma_key(sigma)``, stored on disk as packed bits when the statistics have a
    fingerprint (``cache=False`` disables the disk cache; None = the default cache)."""
    sigma = sigma_key(sigma)
    theta = default_theta(stats.shape) if theta is None else float(theta)
    if cache is False or not stats.fingerprint:
        return mask_and_max(stats, sigma, theta, mode)
    cache = cache or default_cache()
    key = MASKS.key(stats.fingerprint, f"{sigma:.6g}", f"{theta:.6g}", mode)

    def compute():
        mask, top = mask_and_max(stats, sigma, theta, mode)
        return {"bits": np.packbits(mask, axis=None), "d": np.array(mask.shape[0]), "max_abs_m": np.array(top)}

    a = cache.get_or_compute(key, compute)
    d = int(a["d"])
    return np.unpackbits(a["bits"], count=d * d).reshape(d, d).astype(bool), float(a["max_abs_m"])


class MaskColumn(NamedTuple):
    """Neighbourhood of one output pixel, for display: ``map`` (H, W) counts the masked channels."""

    map: np.ndarray
    size: int          # entries in the column (all channels)
    max_abs_m: float   # max|M| at this sigma (the global threshold is theta times this)
    theta: float


def mask_column(stats: DataStats, pixel: tuple[int, int], sigma: float, theta: float | None = None,
                mode: str = "global", channel: int = 0, *, cache: ArrayCache | None | bool = None) -> MaskColumn:
    """Mask column of output pixel (row, col), channel ``channel``, as an (H, W) map."""
    c, h, w = stats.shape
    theta = default_theta(stats.shape) if theta is None else float(theta)
    mask, top = cached_mask(stats, sigma, theta, mode, cache=cache)
    column = mask[:, channel * h * w + pixel[0] * w + pixel[1]]
    return MaskColumn(column.reshape(c, h, w).sum(0), int(column.sum()), top, theta)


# ---------------------------------------------------------------- the denoisers

class MaskedSoftmaxDenoiser(Denoiser):
    """D(x, sigma)[m] = softmax-weighted mean of x0_k[m] with distances over column m of ``mask_fn(sigma)``.

    The analytical denoiser (masks from the data) and any other mask (the LS machine's square masks give
    `patches.LSDenoiser`, which computes them faster by box sums), computed by `masked_engine`.
    ``mask_fn(sigma) -> (d, d)`` bool numpy array. ``.fit(dataset)`` keeps its training images. Learned
    (buffers): train_ (N, d) the training images (a view, no copy), mean_ (d,) float64 their mean (the centre
    of the distances).
    """

    learned = ("train_", "mean_")
    fits_stats = False  # whether fit reads the data set's statistics (a shard then brings all shards')

    def __init__(self, mask_fn: Callable[[float], np.ndarray], *, chunk_size: int | None = None,
                 batch_normalised: bool = False, max_plans: int = 32):
        super().__init__()
        self.mask_fn = mask_fn
        self.chunk_size = chunk_size
        self.batch_normalised = bool(batch_normalised)
        self.max_plans = max_plans
        self.shard_merge: ShardMerge | None = None  # set by `fit_shard`
        self.shape: tuple[int, int, int] | None = None
        self._plans: dict[tuple[float, int], MaskPlan] = {}

    def fit(self, dataset: Dataset) -> MaskedSoftmaxDenoiser:
        train = dataset.train
        self.shape = tuple(train.shape[1:])
        self.train_ = train.flatten(1)        # (N, d), a view: no copy of the training set
        self.mean_ = mean_float64(self.train_)  # (d,) centring: smaller terms, less round-off
        return self

    def fit_shard(self, shard: Shard) -> MaskedSoftmaxDenoiser:
        """`fit` to one process's shard of the training set, centred on the mean of all shards (every process
        drops the same constant from its logits); its softmax states merge with the other shards'."""
        if self.batch_normalised:
            raise ValueError("the batch-normalised variant is not available on a sharded training set: it "
                             "normalises within batches of 512 images, which a split into shards would move")
        self.fit(Dataset.from_tensor(shard.images, stats=shard.stats() if self.fits_stats else None))
        self.mean_ = shard.mean().reshape(self.mean_.shape)
        self.shard_merge = shard.merge
        return self

    def plan_for(self, sigma: float, n_inputs: int = PLAN_BATCH) -> MaskPlan:
        """The plan at ``sigma`` for calls with ``n_inputs`` inputs (plans differ up to PLAN_BATCH inputs)."""
        key = (sigma_key(sigma), plan_batch(n_inputs))
        if key not in self._plans:
            if len(self._plans) >= self.max_plans:
                self._plans.pop(next(iter(self._plans)))
            self._plans[key] = plan_mask(np.asarray(self.mask_fn(key[0]), dtype=bool), self.shape, batch=key[1])
        return self._plans[key]

    def forward(self, x: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W), sigma scalar or (B,) -> x0_hat (B, C, H, W); inputs grouped by noise level."""
        self.check_fitted()

        def denoise(xs: torch.Tensor, sigma: float) -> torch.Tensor:
            return masked_softmax_denoise(xs.flatten(1), sigma, self.train_, self.plan_for(sigma, len(xs)),
                                          chunk_size=self.chunk_size, centre=self.mean_,
                                          batch_normalised=self.batch_normalised,
                                          shard_merge=self.shard_merge).view_as(xs)

        return by_sigma(x, sigma, denoise, key=sigma_key)


class AnalyticalDenoiser(MaskedSoftmaxDenoiser):
    """The paper's denoiser. ``AnalyticalDenoiser(theta=None, threshold="global").fit(dataset)``.

    Masks come from the data set's statistics (`denoiser.stats_of`: a tensor data set without given statistics
    gets them computed from its images, and its masks are not cached on disk). Learned: as
    `MaskedSoftmaxDenoiser`, plus stats_ (DataStats, float64 numpy: the masks' source, not a buffer: masks are
    computed in float64 whatever the module's dtype) and theta_.
    """

    fits_stats = True  # the masks of a shard come from the statistics of all shards

    def __init__(self, theta: float | None = None, threshold: str = "global", *, batch_normalised: bool = False,
                 chunk_size: int | None = None, cache: ArrayCache | None | bool = None):
        if threshold not in THRESHOLD_MODES:
            raise ValueError(f"threshold must be one of {THRESHOLD_MODES}, got {threshold!r}")
        super().__init__(self._mask, chunk_size=chunk_size, batch_normalised=batch_normalised)
        self.theta, self.threshold, self.cache = theta, threshold, cache

    def fit(self, dataset: Dataset) -> AnalyticalDenoiser:
        self.stats_ = stats_of(dataset)
        self.theta_ = default_theta(self.stats_.shape) if self.theta is None else float(self.theta)
        return super().fit(dataset)

    def _mask(self, sigma: float) -> np.ndarray:
        return cached_mask(self.stats_, sigma, self.theta_, self.threshold, cache=self.cache)[0]
