"""The paper's analytical denoiser (Lukoianov et al. 2025, METHODS.md section 5): one softmax over all training
images per output coordinate, each coordinate with its own neighbourhood read off the data's Wiener matrix.

Glossary
    P           P_sigma = U diag(gain) U^T, the Wiener matrix (float64)
    M           P normalised row by row by its diagonal: M[n, m] = P[n, m] / P[n, n] (|P[n, n]| < 1e-6 -> 1)
    theta       binarisation threshold relative to max|M| ("global", the paper's) or to each row's max ("row")
    mask        B[n, m] = |M[n, m]| >= threshold, (d, d) bool; column m is the neighbourhood of output m
    dist_k[m]   sum_n B[n, m] (x[n] - x0_k[n])^2
    x0_hat[m]   sum_k softmax_k(-dist_k[m] / (2 sigma^2)) x0_k[m]  (exact streaming softmax over all N)
    plan        how masked distances are computed fast (see `plan_mask`): output coordinates grouped in square
                tiles ("blocks"); per block, the input rows its mask columns use ("mask" form) or the rows
                where they are zero ("complement" form: full distance minus the complement), whichever is
                fewer, and one dense GEMM per block (a block whose rows cover most of the image skips the
                gather and uses them all). Work per training image: sum over blocks of |cols| * min(|rows|,
                |complement rows| + 1) <= d * d. Plans are built once per sigma and batch size (cost model in
                `plan_mask`: a gathered row serves every input of a batch).
                What it buys depends on the masks: at low and high noise the supports of neighbouring columns
                overlap and the work drops to 3-40 % of d * d; at mid noise (t ~ 200-500 on Fashion-MNIST) the
                supports of neighbouring columns differ (no tiling or clustering of columns found a union much
                below d), so those steps run at the dense cost
    logits      scale * sum_n B[n, m] (x0_k[n]^2 - 2 x[n] x0_k[n]), scale = -1 / (2 sigma^2): the distance
                minus its k-independent part sum_n B[n, m] x[n]^2, which the softmax ignores. One GEMM per
                block serves all inputs of a batch. Images are centred on the training mean first (distances
                do not change, the terms get smaller) and float32 inputs are computed in float64 below
                FLOAT64_BELOW, where round-off in these terms would be amplified by 1 / (2 sigma^2)
    batch-normalised  the public reference code's variant: the softmax normalised within each batch of 512
                training images, the batch results then averaged. It is NOT the formula above; it exists
                for comparison only (`per_batch_difference` measures by how much they differ)

Masks depend only on (data, sigma, theta, threshold mode): computed once in float64 and cached on disk.
Beware the global threshold's fragility (METHODS.md section 10): max|M| comes from near-constant border
pixels; the per-row threshold is the robust option.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.checkpoint import checkpoint

from .cache import ArrayCache, default_cache
from .data import Dataset
from .denoiser import Denoiser, by_sigma, sigma_key, stats_of
from .schedule import REFERENCE_SIGMAS, REFERENCE_TIMESTEPS
from .softmax import ShardMerge, SoftmaxState, empty_state, finish, merge_states, softmax_state
from .stats import DataStats, compute_stats, mean_float64
from .wiener import wiener_matrix

DIAG_EPS = 1e-6
THRESHOLD_MODES = ("global", "row")
FLOAT64_BELOW = 1.0          # sigma below which float32 inputs are computed in float64
REFERENCE_BATCH = 512        # the public code's batch of training images (batch-normalised variant)
BLOCK_ELEMENTS = 1 << 18     # B * chunk * block columns: one block's logits stay in cache (1 MB float32)
MAX_BLOCKS = 64


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
    key = cache.make_key("analytical-mask", stats.fingerprint, f"{sigma:.6g}", f"{theta:.6g}", mode)

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


# ---------------------------------------------------------------- plans: masked distances as blocked GEMMs

@dataclass(frozen=True, eq=False)
class Block:
    cols: torch.Tensor     # (c,) output coordinates
    rows: torch.Tensor     # (r,) input coordinates summed over (sorted)
    weight: torch.Tensor   # (c, r) 0/1 float: mask[rows][:, cols].T, or its complement
    complement: bool       # logits from the full distance minus the sum over rows


@dataclass(frozen=True, eq=False)
class MaskPlan:
    blocks: tuple[Block, ...]
    perm: torch.Tensor     # (d,) concatenated block columns: outputs are computed in this order
    inverse: torch.Tensor  # (d,) inverse permutation
    needs_full: bool
    tile: int
    work: int              # multiply-adds per (training image, input image) of the distance GEMMs
    nnz: int               # mask entries


# cost model of a plan, in multiply-add equivalents per training image for a batch of inputs (1 to PLAN_BATCH):
# GEMMs at an efficiency that grows with their row count, row gathers, and a fixed overhead per block. A
# gathered row serves every input of the batch, so the batch decides between gathering and using all rows:
# one input at mid noise on natural-patches ran 3.8x faster with its own plan than with the batch-8 plan
PLAN_BATCH, _GATHER, _OVERHEAD = 8, 15, 1000
_TILE_OPTIONS = (1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16, 20, 24, 28, 32, 40, 48, 56, 64, 80, 96, 112, 128)


def _gemm_cost(rows_out: int, inner: int) -> float:
    return rows_out * inner / min(1.0, 0.4 + 0.0023 * rows_out)


def _block_cost(c: int, r: int, d: int, batch: int) -> tuple[float, bool]:
    """(cost, use all rows): a block whose union is most of the image skips the gather (zero weights)."""
    gathered = _gemm_cost(batch * c, r) + _gemm_cost(c, r) + 2 * _GATHER * r
    whole = _gemm_cost(batch * c, d) + _gemm_cost(c, d)
    return (whole, True) if whole <= gathered or r == d else (gathered, False)


def _tiles(shape: tuple[int, int, int], tile: int) -> list[np.ndarray]:
    c, h, w = shape
    out = []
    for r0 in range(0, h, tile):
        for c0 in range(0, w, tile):
            pix = (np.arange(r0, min(h, r0 + tile))[:, None] * w + np.arange(c0, min(w, c0 + tile))[None]).ravel()
            out.append((np.arange(c)[:, None] * h * w + pix[None]).ravel())
    return out


def _block_rows(mask: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, bool]:
    """Rows one block sums over, and whether in complement form (fewer rows where some column is 0)."""
    sub = mask[:, cols]
    inside, outside = np.flatnonzero(sub.any(1)), np.flatnonzero(~sub.all(1))
    return (outside, True) if len(outside) + 1 < len(inside) else (inside, False)


def _plan_cost(mask: np.ndarray, tiles: list[np.ndarray], batch: int) -> float:
    d = mask.shape[0]
    cost, full = 0.0, False
    for cols in tiles:
        rows, comp = _block_rows(mask, cols)
        cost += _block_cost(len(cols), len(rows), d, batch)[0] + _OVERHEAD
        full |= comp
    return cost + (_gemm_cost(batch, d) if full else 0.0)


def plan_batch(n_inputs: int) -> int:
    """The batch size a plan is made for: the number of inputs, at most PLAN_BATCH."""
    return max(1, min(PLAN_BATCH, int(n_inputs)))


def plan_mask(mask: np.ndarray, shape: tuple[int, int, int], tile: int | None = None,
              batch: int = PLAN_BATCH) -> MaskPlan:
    """Blocked plan of a (d, d) bool mask for images of ``shape`` and ``batch`` inputs per call; ``tile``
    (pixels) is chosen by a cost model when None (square tiles, at most ``MAX_BLOCKS`` of them)."""
    c, h, w = shape
    d = c * h * w
    if mask.shape != (d, d):
        raise ValueError(f"mask of shape {mask.shape} does not fit images of shape {shape}")
    batch = plan_batch(batch)
    if tile is None:
        options = [t for t in _TILE_OPTIONS if t <= max(h, w) and math.ceil(h / t) * math.ceil(w / t) <= MAX_BLOCKS]
        tile = min(options or [max(h, w)], key=lambda t: (_plan_cost(mask, _tiles(shape, t), batch), -t))
    blocks, work, full = [], 0, False
    for cols in _tiles(shape, tile):
        rows, comp = _block_rows(mask, cols)
        if _block_cost(len(cols), len(rows), d, batch)[1]:
            rows = np.arange(d)
        weight = mask[np.ix_(rows, cols)].T
        blocks.append(Block(torch.from_numpy(cols), torch.from_numpy(rows),
                            torch.from_numpy((~weight if comp else weight).astype(np.float32)), comp))
        work += len(cols) * len(rows)
        full |= comp
    perm = torch.cat([b.cols for b in blocks])
    return MaskPlan(tuple(blocks), perm, torch.argsort(perm), full, tile, work + (d if full else 0), int(mask.sum()))


# ---------------------------------------------------------------- the engine

def _block_weights(xf: torch.Tensor, plan: MaskPlan, scale: float) -> list[torch.Tensor]:
    """Per block the left factors of its two GEMMs, the softmax scale -1 / (2 sigma^2) folded in:
    ``scale * weight`` (c, r) for the x0^2 term and ``-2 scale * weight * x_b[rows]`` (B * c, r) for the cross
    term, so that one GEMM serves all B inputs. Flattened: [w_sq0, w_cross0, w_sq1, ...]."""
    out = []
    for b in plan.blocks:
        w = b.weight.to(xf) * scale
        out += [w, (-2.0 * w[None] * xf[:, None, b.rows]).reshape(len(xf) * len(b.cols), len(b.rows))]
    return out


def _block_logits(x0T: torch.Tensor, x0T_sq: torch.Tensor, blk: Block, w_sq: torch.Tensor, w_cross: torch.Tensor,
                  full: torch.Tensor | None, B: int) -> torch.Tensor:
    """(B, c, K) logits of one block's columns for a chunk x0T (d, K) of training images (transposed).

    logit = scale * sum_rows weight * (x0^2 - 2 x x0): the squared distance minus its k-independent part
    sum x^2, which the softmax ignores. Complement blocks: scale * full distance minus the complement.
    """
    d, K = x0T.shape
    c, r = len(blk.cols), len(blk.rows)
    if r == 0:
        part = x0T.new_zeros(B, c, K)
    else:
        g, g_sq = (x0T, x0T_sq) if r == d else (x0T.index_select(0, blk.rows), x0T_sq.index_select(0, blk.rows))
        part = (w_cross @ g).view(B, c, K)
        sq = (w_sq @ g_sq)[None]
        part = part + sq if part.requires_grad else part.add_(sq)
    return full[:, None, :] - part if blk.complement else part


def _chunk_size(plan: MaskPlan, B: int, N: int, chunk_size: int | None, batch_normalised: bool) -> int:
    widest = max(len(b.cols) for b in plan.blocks)
    if batch_normalised:
        return REFERENCE_BATCH
    return chunk_size or int(min(max(N, 1), max(256, BLOCK_ELEMENTS // (B * widest))))


def _chunk_block_states(x: torch.Tensor, sigma: float, train: torch.Tensor, plan: MaskPlan, chunk_size: int,
                        centre: torch.Tensor | None) -> Iterator[list[SoftmaxState]]:
    """Per chunk of ``chunk_size`` training images, the softmax state of every block of ``plan`` (plan order).

    Each chunk is transposed once so that blocks gather contiguous rows; each block's logits go straight into
    its streaming softmax while they are in cache. Under autograd each chunk is checkpointed.
    """
    B, d = x.shape
    dtype = torch.float64 if x.dtype == torch.float32 and sigma < FLOAT64_BELOW else x.dtype
    centre = torch.zeros(d, dtype=dtype, device=x.device) if centre is None else centre.to(x.device, dtype)
    xw = x.to(dtype) - centre
    scale = -1.0 / (2.0 * sigma**2)

    def chunk_states(xf: torch.Tensor, start: int, *weights: torch.Tensor) -> tuple[torch.Tensor, ...]:
        values = train[start:start + chunk_size].T.to(device=xf.device, dtype=x.dtype).contiguous()  # (d, K)
        x0T = values.to(dtype) - centre[:, None]
        x0T_sq = x0T * x0T
        full = scale * (x0T_sq.sum(0)[None] - 2.0 * (xf @ x0T)) if plan.needs_full else None  # (B, K)
        states = []
        for i, blk in enumerate(plan.blocks):
            logits = _block_logits(x0T, x0T_sq, blk, weights[2 * i], weights[2 * i + 1], full, B)
            v = values.index_select(0, blk.cols)
            if dtype == x.dtype:
                states += softmax_state(logits, v, dim=2, inplace=True)
            else:  # float64 logits of float32 inputs: shift by the max in float64, exponentiate in float32
                m = logits.amax(dim=2)
                st = softmax_state((logits - m[..., None]).to(x.dtype), v, dim=2, inplace=True)
                states += (m, st.s, st.acc)
        return tuple(states)

    weights = _block_weights(xw, plan, scale)
    grad = torch.is_grad_enabled() and x.requires_grad
    for start in range(0, len(train), chunk_size):
        if grad:
            flat = checkpoint(chunk_states, xw, start, *weights, use_reentrant=False)
        else:
            flat = chunk_states(xw, start, *weights)
        yield [SoftmaxState(*flat[i:i + 3]) for i in range(0, len(flat), 3)]


def masked_softmax_state(x: torch.Tensor, sigma: float, train: torch.Tensor, plan: MaskPlan, *,
                         chunk_size: int | None = None, centre: torch.Tensor | None = None) -> SoftmaxState:
    """The per-coordinate softmax state (m, s, acc each (B, d), output order) of the masked softmax denoiser
    over ``train`` (N, d), which may be empty (the empty state). States of disjoint shards merge exactly;
    `finish` gives x0_hat."""
    B, d = x.shape
    chunk_size = _chunk_size(plan, B, len(train), chunk_size, False)
    total = None
    for states in _chunk_block_states(x, sigma, train, plan, chunk_size, centre):
        total = states if total is None else [merge_states(a, b) for a, b in zip(total, states, strict=True)]
    if total is None:
        m_dtype = torch.float64 if x.dtype == torch.float32 and sigma < FLOAT64_BELOW else x.dtype
        return empty_state((B, d), (B, d), dtype=x.dtype, m_dtype=m_dtype, device=x.device)
    return SoftmaxState(*(torch.cat(parts, dim=1)[:, plan.inverse] for parts in zip(*total, strict=True)))


def masked_softmax_denoise(x: torch.Tensor, sigma: float, train: torch.Tensor, plan: MaskPlan, *,
                           chunk_size: int | None = None, batch_normalised: bool = False,
                           centre: torch.Tensor | None = None, shard_merge: ShardMerge | None = None
                           ) -> torch.Tensor:
    """x0_hat (B, d) of the per-coordinate softmax denoiser with mask ``plan`` at one ``sigma``.

    x (B, d); train (N, d), streamed in chunks of ``chunk_size`` images (default: a cache-sized budget; 512
    when ``batch_normalised``). float32 inputs are computed in float64 below FLOAT64_BELOW.
    ``centre`` (d,): subtracted from inputs and training images before the distances (which it leaves
    unchanged) to shrink round-off; the training mean is a good choice.
    ``shard_merge``: ``train`` is one shard of the training set, and this merges its state with the others'.
    Under autograd each chunk is checkpointed, so memory stays O(chunk) and Jacobians work.
    """
    if not batch_normalised:
        state = masked_softmax_state(x, sigma, train, plan, chunk_size=chunk_size, centre=centre)
        return finish(state if shard_merge is None else shard_merge(state)).to(x.dtype)
    if shard_merge is not None:
        raise ValueError("the batch-normalised variant is not available on a sharded training set")
    chunk_size = _chunk_size(plan, len(x), len(train), chunk_size, True)
    results = [torch.cat([finish(s) for s in states], dim=1)
               for states in _chunk_block_states(x, sigma, train, plan, chunk_size, centre)]
    return torch.stack(results).mean(0)[:, plan.inverse].to(x.dtype)


def analytical_dense(x: torch.Tensor, sigma: float, train: torch.Tensor, mask: np.ndarray | torch.Tensor, *,
                     chunk_size: int = REFERENCE_BATCH, batch_normalised: bool = False) -> torch.Tensor:
    """The straightforward implementation (the public code's per-batch einsum form), exact softmax by default.

    x (B, C, H, W) or (B, d), train (N, ...), mask (d, d) -> x0_hat shaped like x. The yardstick of the fast
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


class MaskedSoftmaxDenoiser(Denoiser):
    """D(x, sigma)[m] = softmax-weighted mean of x0_k[m] with distances over column m of ``mask_fn(sigma)``.

    The engine of the analytical denoiser (masks from the data) and of any other mask (the LS machine's square
    masks give `patches.LSDenoiser`, which computes them faster by box sums). ``mask_fn(sigma) -> (d, d)`` bool
    numpy array. ``.fit(dataset)`` keeps its training images. Learned (buffers): train_ (N, d) the training
    images (a view, no copy), mean_ (d,) float64 their mean (the centre of the distances).
    """

    learned = ("train_", "mean_")

    def __init__(self, mask_fn: Callable[[float], np.ndarray], *, chunk_size: int | None = None,
                 batch_normalised: bool = False, max_plans: int = 32):
        super().__init__()
        self.mask_fn = mask_fn
        self.chunk_size = chunk_size
        self.batch_normalised = bool(batch_normalised)
        self.max_plans = max_plans
        self.shard_merge: ShardMerge | None = None  # set by `distributed.shard_denoiser`
        self.shape: tuple[int, int, int] | None = None
        self._plans: dict[tuple[float, int], MaskPlan] = {}

    def fit(self, dataset: Dataset) -> MaskedSoftmaxDenoiser:
        train = dataset.train
        self.shape = tuple(train.shape[1:])
        self.train_ = train.flatten(1)        # (N, d), a view: no copy of the training set
        self.mean_ = mean_float64(self.train_)  # (d,) centring: smaller terms, less round-off
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


# ---------------------------------------------------------------- exact vs the reference code's variant

def per_batch_difference(dataset: Dataset, *, n_train: int = 10_000, n: int = 8, seed: int = 0,
                         sigmas: list[float] | None = None, theta: float | None = None,
                         stats: DataStats | None = None) -> list[dict]:
    """How far the batch-normalised variant (public code) is from the exact softmax, per sigma.

    Both built from the first ``n_train`` training images (statistics and masks from them too, unless
    ``stats`` is given), evaluated on the same noisy versions of the first ``n`` test images.
    Rows: t, sigma, max_abs_diff, mean_abs_diff.
    """
    sigmas = list(REFERENCE_SIGMAS if sigmas is None else sigmas)
    train = dataset.train[:n_train]
    stats = stats or compute_stats(train, fingerprint=f"{dataset.fingerprint}:first-{len(train)}")
    data = Dataset.from_tensor(train, stats=stats)
    exact = AnalyticalDenoiser(theta).fit(data)
    batched = AnalyticalDenoiser(theta, batch_normalised=True).fit(data)
    from .evaluate import noisy_heldout

    rows = []
    with torch.no_grad():
        for i, (sigma, x) in enumerate(zip(sigmas, noisy_heldout(dataset.test[:n], sigmas, seed), strict=True)):
            diff = (exact(x, sigma) - batched(x, sigma)).abs()
            t = REFERENCE_TIMESTEPS[i] if sigmas == list(REFERENCE_SIGMAS) else None
            rows.append({"t": t, "sigma": sigma, "max_abs_diff": float(diff.max()),
                         "mean_abs_diff": float(diff.mean())})
    return rows
