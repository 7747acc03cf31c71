"""The empirical optimal denoiser: an exact softmax over all training images (streamed, see `softmax.py`).

Glossary
    x0_k        training image k, flattened: (d,)
    logit_k     -||x - x0_k||^2 / (2 sigma^2); terms constant in k (||x||^2) are dropped, softmax ignores them
    w           softmax_k(logit) over ALL N training images
    D_opt       sum_k w_k x0_k: the posterior mean when the data distribution is the training set itself
    state       `softmax.SoftmaxState` of a chunk of training images; states of chunks (and of shards) merge
                exactly, so N never has to fit in memory
    top_k       an APPROXIMATION: keep only the K nearest training images (the public reference code uses
                K = 200, which at t = 900 on Fashion-MNIST holds only ~3 % of the softmax weight)

Precision: below sigma 2 the distances of float32 inputs are computed in float64 (`softmax.PRECISION.optimal`).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from locality_core.data import Dataset
from locality_core.denoisers.base import Denoiser, Shard, as_batch_sigma
from locality_core.denoisers.softmax import (
    PRECISION,
    ShardMerge,
    SoftmaxState,
    empty_state,
    finish,
    merge_all,
    softmax_state,
    threaded_state,
)

DEFAULT_CHUNK = 4096


def distance_logits(x: torch.Tensor, x0: torch.Tensor, x0_sq: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """(B, K) logits -(||x0_k||^2 - 2 x.x0_k) / (2 sigma_b^2) for x (B, d), x0 (K, d), x0_sq (K,), sigma (B,)."""
    return (2.0 * (x @ x0.T) - x0_sq) / (2.0 * sigma[:, None] ** 2)


def _work_dtype(x: torch.Tensor, sigma: torch.Tensor) -> torch.dtype:
    return PRECISION.optimal.form(x.dtype, sigma).dtype


def optimal_state(x: torch.Tensor, sigma: float | torch.Tensor, train: torch.Tensor, *,
                  chunk_size: int = DEFAULT_CHUNK, train_sq: torch.Tensor | None = None) -> SoftmaxState:
    """The softmax state of D_opt over ``train`` (N, ...) for x (B, C, H, W): m, s (B,), acc (B, d), in the
    work dtype (`softmax.PRECISION.optimal`). ``train`` may be empty (a shard with no
    images): the empty state. `finish` of it is D_opt; states of disjoint shards merge exactly. With several
    torch threads (and no derivatives) the training set is split over threads (`softmax.threaded_state`)."""
    sigma = as_batch_sigma(sigma, x)
    dtype = _work_dtype(x, sigma)
    xf, sig = x.flatten(1).to(dtype), sigma.to(dtype)
    train = train.flatten(1)
    if train_sq is None:
        train_sq = train.double().pow(2).sum(1)

    def chunk_states(part: slice) -> Iterator[SoftmaxState]:
        for start in range(part.start, part.stop, chunk_size):
            stop = min(part.stop, start + chunk_size)
            x0 = train[start:stop].to(device=x.device, dtype=dtype)
            yield softmax_state(distance_logits(xf, x0, train_sq[start:stop].to(device=x.device, dtype=dtype), sig), x0)

    def state_of(part: slice) -> SoftmaxState:
        total = merge_all(chunk_states(part))
        return total if total is not None else empty_state((len(x),), tuple(xf.shape), dtype=dtype, device=x.device)

    return threaded_state(state_of, len(train), inputs=(x, sigma, train, train_sq))


def optimal_denoise(x: torch.Tensor, sigma: float | torch.Tensor, train: torch.Tensor, *,
                    chunk_size: int = DEFAULT_CHUNK, train_sq: torch.Tensor | None = None,
                    top_k: int | None = None, shard_merge: ShardMerge | None = None) -> torch.Tensor:
    """Exact D_opt(x, sigma): x (B, C, H, W), train (N, C, H, W) or (N, d) -> x0_hat (B, C, H, W).

    Training images are streamed in chunks of ``chunk_size`` (memory O(B * chunk_size)).
    ``top_k``: keep only the K nearest training images (an approximation; None = exact, all N).
    ``shard_merge``: ``train`` is one shard of the training set; this merges its state with the other shards'
    (see `distributed.all_merge_states`).
    """
    if top_k is not None:
        if shard_merge is not None:
            raise ValueError("top_k is not available on a sharded training set")
        sigma = as_batch_sigma(sigma, x)
        dtype = _work_dtype(x, sigma)
        train = train.reshape(len(train), -1)
        train_sq = train.double().pow(2).sum(1) if train_sq is None else train_sq
        return _top_k_denoise(x.flatten(1).to(dtype), sigma.to(dtype), train, train_sq, top_k,
                              chunk_size).to(x.dtype).view_as(x)
    state = optimal_state(x, sigma, train, chunk_size=chunk_size, train_sq=train_sq)
    if shard_merge is not None:
        state = shard_merge(state)
    return finish(state).to(x.dtype).view_as(x)


def _top_k_denoise(xf, sig, train, train_sq, k, chunk_size):
    """Softmax over the K nearest training images only (kept by a streaming top-K of the logits)."""
    best, best_idx = None, None
    for start in range(0, len(train), chunk_size):
        x0 = train[start:start + chunk_size].to(device=xf.device, dtype=xf.dtype)
        logits = distance_logits(xf, x0, train_sq[start:start + chunk_size].to(xf), sig)
        idx = torch.arange(start, start + len(x0), device=xf.device).expand_as(logits)
        if best is not None:
            logits, idx = torch.cat([best, logits], 1), torch.cat([best_idx, idx], 1)
        best, pos = logits.topk(min(k, logits.shape[1]), dim=1)
        best_idx = idx.gather(1, pos)
    x0_top = train[best_idx.flatten().to(train.device)].to(device=xf.device, dtype=xf.dtype).view(*best_idx.shape, -1)
    return (torch.softmax(best, dim=1)[..., None] * x0_top).sum(1)


class OptimalDenoiser(Denoiser):
    """D_opt over all training images. ``OptimalDenoiser().fit(dataset)``.
    Learned (buffers): train_ (N, d) the training images, train_sq_ (N,) float64 their squared norms."""

    learned = ("train_", "train_sq_")

    def __init__(self, chunk_size: int = DEFAULT_CHUNK, top_k: int | None = None):
        super().__init__()
        self.shard_merge: ShardMerge | None = None  # set by `fit_shard`
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be a positive integer or None, got {top_k!r}")
        self.chunk_size = int(chunk_size)
        self.top_k = top_k
        self.shape: tuple[int, int, int] | None = None
        self._train64: tuple[torch.Tensor, torch.Tensor] | None = None  # (train_, its float64 copy)

    def fit(self, dataset: Dataset) -> OptimalDenoiser:
        train = dataset.train
        self.shape = tuple(train.shape[1:])
        self.train_ = train.flatten(1).contiguous()          # (N, d)
        self.train_sq_ = self.train_.double().pow(2).sum(1)                # (N,)
        self._train64 = None
        return self

    def fit_shard(self, shard: Shard) -> OptimalDenoiser:
        """`fit` to one process's shard of the training set; its softmax states merge with the other shards'."""
        if self.top_k is not None:
            raise ValueError("top_k is not available on a sharded training set: the K nearest images of one "
                             "shard are not the K nearest of all")
        self.fit(Dataset.from_tensor(shard.images))
        self.shard_merge = shard.merge
        return self

    def _train_float64(self) -> torch.Tensor:
        """train_ in float64, kept once (instead of converting every call) while train_ stays the same."""
        if self._train64 is None or self._train64[0] is not self.train_:
            self._train64 = (self.train_, self.train_.double())
        return self._train64[1]

    def forward(self, x: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W), sigma scalar or (B,) -> x0_hat (B, C, H, W)."""
        self.check_fitted()
        train = self.train_
        if _work_dtype(x, as_batch_sigma(sigma, x)) == torch.float64 and train.dtype != torch.float64:
            train = self._train_float64()
        return optimal_denoise(x, sigma, train, chunk_size=self.chunk_size, train_sq=self.train_sq_,
                               top_k=self.top_k, shard_merge=self.shard_merge)
