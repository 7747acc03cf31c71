"""The empirical optimal denoiser, and the exact streaming softmax that every softmax denoiser here shares.

Glossary
    x0_k        training image k, flattened: (d,)
    logit_k     -||x - x0_k||^2 / (2 sigma^2); terms constant in k (||x||^2) are dropped, softmax ignores them
    w           softmax_k(logit) over ALL N training images
    D_opt       sum_k w_k x0_k: the posterior mean when the data distribution is the training set itself
    state       SoftmaxState(m, s, acc) of a chunk of candidates: m = max logit, s = sum exp(logit - m),
                acc = sum exp(logit - m) * value. Two states merge exactly (rescale both to the larger max),
                so a softmax over N candidates streams through chunks without ever holding N logits
    top_k       an APPROXIMATION: keep only the K nearest training images (the public reference code uses
                K = 200, which at t = 900 on Fashion-MNIST holds only ~3 % of the softmax weight)

Precision: below ``FLOAT64_BELOW`` the distances of float32 inputs are computed in float64. There the
logits are distances divided by 2 sigma^2 ~ 1e-4, and float32 round-off in ||x0||^2 - 2 x.x0 would move
them by O(1).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import NamedTuple

import torch
from torch import nn

from .data import Dataset
from .unet import as_batch_sigma

FLOAT64_BELOW = 2.0  # sigma below which float32 inputs get float64 distances
EXP_FLOOR = -87.0    # exp(x) for x below this takes a slow path (float32 underflow); see `exp_shifted`
DEFAULT_CHUNK = 4096


class SoftmaxState(NamedTuple):
    """Partial softmax of some candidates. Shared weights: m, s (B,), acc (B, F); per coordinate: all (B, F)."""

    m: torch.Tensor
    s: torch.Tensor
    acc: torch.Tensor


ShardMerge = Callable[[SoftmaxState], SoftmaxState]  # merges one shard's state with the other shards'


def _finite_or_zero(m: torch.Tensor) -> torch.Tensor:
    """The max used as the exp reference: rows whose logits are all -inf get 0 (their exps are then 0, not nan)."""
    return torch.where(torch.isfinite(m), m, torch.zeros_like(m))


def _per_row(scale: torch.Tensor, acc: torch.Tensor) -> torch.Tensor:
    return scale[..., None] if scale.ndim < acc.ndim else scale


def exp_shifted(logits: torch.Tensor, ref: torch.Tensor, *, inplace: bool = False) -> torch.Tensor:
    """exp(max(logits - ref, EXP_FLOOR)). The floor keeps exp off its slow underflow path (5-10x slower below
    -87 in float32); it turns weights below e^-87 ~ 1.6e-38 (relative to the largest, 1) into 1.6e-38, far below
    the resolution of any sum that contains the largest."""
    if inplace:
        return logits.sub_(ref).clamp_(min=EXP_FLOOR).exp_()
    return torch.exp((logits - ref).clamp(min=EXP_FLOOR))


def softmax_state(logits: torch.Tensor, values: torch.Tensor, *, dim: int = 1, inplace: bool = False
                  ) -> SoftmaxState:
    """State of one chunk of K candidates; ``dim`` is the candidate dimension of ``logits``.

    logits (B, K), values (K, F): one softmax per row, weights shared by the F features (matrix product).
    logits (B, K, F) with values (K, F) (dim=1), or (B, F, K) with values (F, K) (dim=2): one softmax per
    (row, feature), the analytical denoiser's form.
    ``inplace``: overwrite ``logits`` (per-feature form, no autograd) to save memory traffic.
    A softmax whose logits are all -inf gets s = acc = 0 (so `finish` gives nan, like a one-shot softmax).
    """
    m = logits.amax(dim=dim)
    ref = _finite_or_zero(m).unsqueeze(dim)
    if logits.ndim == 2:
        p = exp_shifted(logits, ref)
        s, acc = p.sum(1), p @ values
    elif not inplace or (torch.is_grad_enabled() and (logits.requires_grad or values.requires_grad)):
        p = exp_shifted(logits, ref)
        s, acc = p.sum(dim), (p * values).sum(dim)
    else:
        p = exp_shifted(logits, ref, inplace=True)  # the memory-bound hot loop of the analytical denoiser
        s = p.sum(dim)
        acc = p.mul_(values).sum(dim)
    empty = torch.isneginf(m)
    if bool(empty.any()):
        s, acc = s.masked_fill(empty, 0.0), acc.masked_fill(empty if acc.ndim == empty.ndim else empty[..., None], 0.0)
    return SoftmaxState(m, s, acc)


def empty_state(rows: tuple[int, ...], acc: tuple[int, ...], *, dtype: torch.dtype, m_dtype: torch.dtype | None = None,
                device: torch.device | str = "cpu") -> SoftmaxState:
    """The state of no candidates (m = -inf, s = acc = 0): merging it into any state changes nothing. Shapes
    as in `SoftmaxState`: ``rows`` of m and s, ``acc`` of acc; m in ``m_dtype`` (default ``dtype``)."""
    m = torch.full(rows, -torch.inf, dtype=m_dtype or dtype, device=device)
    return SoftmaxState(m, torch.zeros(rows, dtype=dtype, device=device), torch.zeros(acc, dtype=dtype, device=device))


def rescaled(state: SoftmaxState, m: torch.Tensor) -> SoftmaxState:
    """``state`` with its sums expressed relative to ``m`` (>= state.m): s and acc times exp(state.m - m)."""
    scale = torch.exp(state.m - _finite_or_zero(m)).to(state.s.dtype)
    return SoftmaxState(m, state.s * scale, state.acc * _per_row(scale, state.acc))


def merge_states(a: SoftmaxState, b: SoftmaxState) -> SoftmaxState:
    """Exact merge: both partial sums rescaled to the larger running max."""
    m = torch.maximum(a.m, b.m)
    a, b = rescaled(a, m), rescaled(b, m)
    return SoftmaxState(m, a.s + b.s, a.acc + b.acc)


def finish(state: SoftmaxState) -> torch.Tensor:
    """The softmax-weighted average (B, F); nan where every logit of a softmax was -inf."""
    return state.acc / _per_row(state.s, state.acc)


def merge_all(states: Iterable[SoftmaxState]) -> SoftmaxState | None:
    """All states merged into one (None when there are none)."""
    total = None
    for state in states:
        total = state if total is None else merge_states(total, state)
    return total


def reduce_states(states: Iterable[SoftmaxState]) -> torch.Tensor:
    """Merge the states of all chunks and return the weighted average."""
    total = merge_all(states)
    if total is None:
        raise ValueError("no candidates: the softmax needs at least one chunk")
    return finish(total)


def streaming_softmax_average(chunks: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """sum_k softmax_k(logits) values_k over all chunks of candidates, exactly (running max, rescaled sums).

    ``chunks`` yields (logits, values) pairs shaped as in `softmax_state`; the result equals
    `softmax_average` on the concatenated chunks, for any chunking.
    """
    return reduce_states(softmax_state(logits, values) for logits, values in chunks)


def softmax_average(logits: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """One-shot reference of `streaming_softmax_average` (all K candidates at once)."""
    w = torch.softmax(logits, dim=1)
    return w @ values if logits.ndim == 2 else (w * values).sum(1)


# ---------------------------------------------------------------- the optimal denoiser

def distance_logits(x: torch.Tensor, x0: torch.Tensor, x0_sq: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """(B, K) logits -(||x0_k||^2 - 2 x.x0_k) / (2 sigma_b^2) for x (B, d), x0 (K, d), x0_sq (K,), sigma (B,)."""
    return (2.0 * (x @ x0.T) - x0_sq) / (2.0 * sigma[:, None] ** 2)


def _work_dtype(x: torch.Tensor, sigma: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float32 and bool((sigma < FLOAT64_BELOW).any()) else x.dtype


def optimal_state(x: torch.Tensor, sigma: float | torch.Tensor, train: torch.Tensor, *,
                  chunk_size: int = DEFAULT_CHUNK, train_sq: torch.Tensor | None = None) -> SoftmaxState:
    """The softmax state of D_opt over ``train`` (N, ...) for x (B, C, H, W): m, s (B,), acc (B, d), in the
    work dtype (float64 for float32 inputs below FLOAT64_BELOW). ``train`` may be empty (a shard with no
    images): the empty state. `finish` of it is D_opt; states of disjoint shards merge exactly."""
    sigma = as_batch_sigma(sigma, x)
    dtype = _work_dtype(x, sigma)
    xf, sig = x.flatten(1).to(dtype), sigma.to(dtype)
    train = train.flatten(1)
    if train_sq is None:
        train_sq = train.double().pow(2).sum(1)

    def states():
        for start in range(0, len(train), chunk_size):
            x0 = train[start:start + chunk_size].to(device=x.device, dtype=dtype)
            x0_sq = train_sq[start:start + chunk_size].to(device=x.device, dtype=dtype)
            yield softmax_state(distance_logits(xf, x0, x0_sq, sig), x0)

    total = merge_all(states())
    return total if total is not None else empty_state((len(x),), tuple(xf.shape), dtype=dtype, device=x.device)


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


class OptimalDenoiser(nn.Module):
    """D_opt over all training images. ``OptimalDenoiser().fit(dataset_or_train_tensor)``."""

    def __init__(self, chunk_size: int = DEFAULT_CHUNK, top_k: int | None = None):
        super().__init__()
        self.shard_merge: ShardMerge | None = None  # set by `distributed.shard_denoiser`
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be a positive integer or None, got {top_k!r}")
        self.chunk_size = int(chunk_size)
        self.top_k = top_k
        self.shape: tuple[int, int, int] | None = None

    def fit(self, data: Dataset | torch.Tensor) -> OptimalDenoiser:
        train = data.train if isinstance(data, Dataset) else data
        self.shape = tuple(train.shape[1:])
        self.train_ = train.flatten(1).contiguous()          # (N, d)
        self.train_sq_ = self.train_.double().pow(2).sum(1)                # (N,)
        self._train64: torch.Tensor | None = None
        return self

    def forward(self, x: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W), sigma scalar or (B,) -> x0_hat (B, C, H, W)."""
        if self.shape is None:
            raise RuntimeError("OptimalDenoiser is not fitted: call .fit(data) first")
        train = self.train_
        if _work_dtype(x, as_batch_sigma(sigma, x)) == torch.float64 and train.dtype != torch.float64:
            if self._train64 is None:                  # kept once, instead of converting every call
                self._train64 = train.double()
            train = self._train64
        return optimal_denoise(x, sigma, train, chunk_size=self.chunk_size, train_sq=self.train_sq_,
                               top_k=self.top_k, shard_merge=self.shard_merge)
