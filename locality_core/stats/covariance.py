"""Data statistics: mean, covariance and its eigendecomposition, streamed, in float64, cached on disk and in
memory.

Glossary
    mu        (d,) mean image, flattened with m = c*H*W + row*W + col
    Sigma     (d, d) covariance, Xc^T Xc / (N - 1)
    lambda    (d,) eigenvalues, descending (tiny negative round-off clipped to 0)
    U         (d, d) eigenvectors as columns: Sigma = U diag(lambda) U^T

The covariance is accumulated chunk by chunk as sums and cross products around a shift (the first
chunk's mean, to avoid cancellation), so N never has to fit in memory twice; it equals the one-shot
result to round-off.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from locality_core.data import Dataset
from locality_core.store.cache import ArrayCache, cache_kind, default_cache
from locality_core.store.memory import BUDGET, check_fits, statistics_bytes


def mean_float64(images: torch.Tensor, chunk_size: int = 4096) -> torch.Tensor:
    """The mean over the first axis in float64, summed in chunks (no float64 copy of the whole set)."""
    total = torch.zeros(images.shape[1:], dtype=torch.float64, device=images.device)
    for start in range(0, len(images), chunk_size):
        total += images[start:start + chunk_size].sum(0, dtype=torch.float64)
    return total / max(1, len(images))


class Moments(NamedTuple):
    """Partial moments of some samples: count n, mean (d,), and m2 (d, d) = sum (x - mean)(x - mean)^T.
    Two merge exactly (`merge_moments`), so disjoint shards of a data set combine into its moments."""

    n: int
    mean: np.ndarray
    m2: np.ndarray


def partial_moments(chunks: Iterable[np.ndarray], d: int) -> Moments:
    """`Moments` of chunks of shape (n_i, d) (none at all: n = 0). Sums and cross products are accumulated
    around a shift (the first chunk's mean) to avoid cancellation."""
    shift, total, cross = np.zeros(d), np.zeros(d), np.zeros((d, d))
    n = 0
    for chunk in chunks:
        x = np.asarray(chunk, dtype=np.float64).reshape(len(chunk), d)
        if n == 0 and len(x):
            shift = x.mean(0)
        xs = x - shift
        total += xs.sum(0)
        cross += xs.T @ xs
        n += len(x)
    m = total / max(n, 1)
    return Moments(n, shift + m, cross - n * np.outer(m, m))


def merge_moments(a: Moments, b: Moments) -> Moments:
    """Exact merge of the moments of two disjoint sets of samples (Chan, Golub & LeVeque's pairwise update)."""
    n = a.n + b.n
    if n == 0:
        return a
    delta = b.mean - a.mean
    return Moments(n, a.mean + delta * (b.n / n), a.m2 + b.m2 + np.outer(delta, delta) * (a.n * b.n / n))


def covariance(moments: Moments) -> np.ndarray:
    """(d, d) covariance with N - 1 normalisation, symmetrised."""
    if moments.n < 2:
        raise ValueError("need at least 2 samples for a covariance")
    cov = moments.m2 / (moments.n - 1)
    return (cov + cov.T) / 2


def streaming_moments(chunks: Iterable[np.ndarray]) -> tuple[np.ndarray, np.ndarray, int]:
    """Mean (d,), covariance (d, d) with N - 1 normalisation, and N, from chunks of shape (n_i, d)."""
    chunks = iter(chunks)
    first = next(chunks, None)
    if first is None:
        raise ValueError("need at least 2 samples for a covariance")
    first = np.asarray(first, dtype=np.float64).reshape(len(first), -1)
    moments = partial_moments(itertools.chain([first], chunks), first.shape[1])
    return moments.mean, covariance(moments), moments.n


def eigendecomposition(cov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (descending, clipped at 0) and eigenvectors (columns) of a symmetric matrix, float64."""
    vals, vecs = np.linalg.eigh(np.asarray(cov, dtype=np.float64))
    order = np.argsort(vals)[::-1]
    return np.clip(vals[order], 0.0, None), np.ascontiguousarray(vecs[:, order])


def components_for_variance(eigvals: np.ndarray, share: float) -> int:
    """Smallest number of leading components holding ``share`` of the total variance."""
    cum = np.cumsum(eigvals) / eigvals.sum()
    return int(np.searchsorted(cum, share - 1e-12) + 1)


@dataclass(frozen=True, eq=False)
class DataStats:
    """Statistics of one data set (float64 numpy arrays; ``shape`` is (C, H, W))."""

    mean: np.ndarray       # (d,)
    cov: np.ndarray        # (d, d)
    eigvals: np.ndarray    # (d,) descending
    eigvecs: np.ndarray    # (d, d) columns
    n: int
    shape: tuple[int, int, int]
    fingerprint: str

    @property
    def d(self) -> int:
        return self.mean.shape[0]

    @property
    def trace(self) -> float:
        return float(self.eigvals.sum())

    def components_for(self, share: float) -> int:
        return components_for_variance(self.eigvals, share)

    def correlation(self) -> np.ndarray:
        std = np.sqrt(np.clip(np.diag(self.cov), 1e-12, None))
        return self.cov / np.outer(std, std)

    def summary(self, top: int = 5) -> dict:
        return {"n": self.n, "d": self.d, "shape": list(self.shape), "trace": self.trace,
                "top_eigenvalues": [float(v) for v in self.eigvals[:top]],
                "components_90_95_99": [self.components_for(s) for s in (0.90, 0.95, 0.99)]}


def data_moments(train: torch.Tensor, *, chunk_size: int = 4096,
                 progress: Callable[[float, str], None] | None = None) -> Moments:
    """`Moments` of ``train`` (N, C, H, W) (N may be 0), streamed in float64 chunks; progress runs 0 to 0.8."""
    n, d = len(train), int(np.prod(train.shape[1:]))
    n_chunks = max(1, -(-n // chunk_size))

    def chunks():
        for i in range(n_chunks):
            if progress:
                progress(0.8 * i / n_chunks, f"covariance: chunk {i + 1}/{n_chunks}")
            yield train[i * chunk_size:(i + 1) * chunk_size].reshape(-1, d).double().numpy()

    return partial_moments(chunks(), d)


def compute_stats(train: torch.Tensor, *, chunk_size: int = 4096, fingerprint: str = "",
                  progress: Callable[[float, str], None] | None = None) -> DataStats:
    """Streamed moments and eigendecomposition of ``train`` (N, C, H, W)."""
    shape = tuple(train.shape[1:])
    d = int(np.prod(shape))
    check_fits(d, shape)
    with BUDGET.reserve(statistics_bytes(d, min(chunk_size, max(1, len(train)))), f"the statistics of d = {d:,} "
                        "pixels", "use smaller images"):
        moments = data_moments(train, chunk_size=chunk_size, progress=progress)
        cov = covariance(moments)
        if progress:
            progress(0.8, f"eigendecomposition of a {d} x {d} matrix")
        eigvals, eigvecs = eigendecomposition(cov)
    if progress:
        progress(1.0, "done")
    return DataStats(moments.mean, cov, eigvals, eigvecs, moments.n, shape, fingerprint)  # type: ignore[arg-type]


def stats_arrays(s: DataStats) -> dict[str, np.ndarray]:
    """The arrays a cache entry of statistics holds."""
    return {"mean": s.mean, "cov": s.cov, "eigvals": s.eigvals, "eigvecs": s.eigvecs, "n": np.array(s.n)}


def stats_from_arrays(a: dict[str, np.ndarray], dataset: Dataset) -> DataStats:
    """The `DataStats` of ``dataset`` from a cache entry (`stats_arrays`)."""
    return DataStats(a["mean"], a["cov"], a["eigvals"], a["eigvecs"], int(a["n"]), dataset.shape,
                     dataset.fingerprint)


STATS = cache_kind("stats")


def stats_key(dataset: Dataset) -> str:
    """The cache key of ``dataset``'s statistics: its fingerprint (which changes with its images)."""
    return STATS.key(dataset.fingerprint)


def get_stats(dataset: Dataset, *, cache: ArrayCache | None = None,
              progress: Callable[[float, str], None] | None = None) -> DataStats:
    """Statistics of ``dataset``, computed once (``progress`` hears that), then kept in this process's memory
    per fingerprint and on disk: every page reads them on every rerun, from memory."""
    check_fits(dataset.d, dataset.shape)
    cache = cache or default_cache()

    def compute():
        return stats_arrays(compute_stats(dataset.train, fingerprint=dataset.fingerprint, progress=progress))

    return stats_from_arrays(cache.get_or_compute(stats_key(dataset), compute, keep=True), dataset)
