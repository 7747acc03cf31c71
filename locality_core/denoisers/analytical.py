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
    groups      how a plan is executed: its blocks split by kind (over all rows / gathered / gathered
                complement) and padded, gathered ones with similar row counts together, into a few
                `BlockGroup`s; per training chunk a group is one gather, one or two (batched) GEMMs and one
                softmax pass, on a chunk sized so that its logits stay in cache (GROUP_ELEMENTS). Padding is
                neutral: padded rows have weight 0, padded columns are dropped
    logits      scale * sum_n B[n, m] (x0_k[n]^2 - 2 x[n] x0_k[n]), scale = -1 / (2 sigma^2): the distance
                minus its k-independent part sum_n B[n, m] x[n]^2, which the softmax ignores. One GEMM per
                group serves all inputs of a batch: over the expanded terms x0^2 - 2 x x0 of every input
                (groups over all rows; every group for one input), or a cross-term GEMM plus a shared
                x0^2 GEMM (gathered groups of a batch). Kept in base-2 units (times log2 e): exp2 is 3x
                faster than exp and has no slow path for underflow. Images are centred on the training
                mean first (distances do not change, the terms get smaller). One input runs in float32 down
                to sigma 0.05 and sums the direct terms (x - x0)^2 below sigma 0.4; a batch below sigma 1 is
                computed in float64, where round-off in its terms would be amplified by 1 / (2 sigma^2)
                (`work_form`)
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

from locality_core.data import Dataset
from locality_core.denoisers.base import Denoiser, by_sigma, sigma_key, stats_of
from locality_core.denoisers.evaluate import noisy_heldout
from locality_core.denoisers.softmax import (
    DIRECT_FLOAT64_BELOW,
    ShardMerge,
    SoftmaxState,
    derivative_free,
    empty_state,
    finish,
    finite_or_zero,
    merge_all,
    merge_states,
    threaded_state,
)
from locality_core.denoisers.wiener import wiener_matrix
from locality_core.schedule import REFERENCE_SIGMAS, REFERENCE_TIMESTEPS
from locality_core.stats.covariance import DataStats, compute_stats, mean_float64
from locality_core.store.cache import ArrayCache, cache_kind, default_cache

DIAG_EPS = 1e-6
THRESHOLD_MODES = ("global", "row")
FLOAT64_BELOW = 1.0          # sigma below which a batch of float32 inputs is computed in float64 (`work_form`)
DIRECT_BELOW = 0.4           # sigma below which one input sums direct terms (`work_form`)
REFERENCE_BATCH = 512        # the public code's batch of training images (batch-normalised variant)
GROUP_ELEMENTS = 1 << 21     # B * chunk * a group's padded columns: its logits stay in L3 (8 MB float32)
THREADED_CHUNKS = 2          # chunks this many times larger in a call that runs several threads itself (one
                             # not split over threads: `softmax.threaded_state`): half the operations
EXPANDED_MIN_COLUMNS = 128   # groups over all rows this wide use the per-input terms (see `_uses_terms`)
MIN_CHUNK = 64               # training images per chunk at least: fewer would be mostly per-operation overhead
GROUP_SLACK = 0.95           # gathered blocks padded together have at least this share of their group's rows
LOG2E = 1.0 / math.log(2.0)  # logits in base-2 units: exp2 instead of exp
MAX_BLOCKS = 64
MASKS = cache_kind("analytical-mask")


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
    groups: tuple = ()     # the blocks as executed: a few padded `BlockGroup`s (see `group_blocks`)
    layout: torch.Tensor | None = None  # (d,) position of output m among the groups' concatenated columns


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
              batch: int = PLAN_BATCH, slack: float = GROUP_SLACK) -> MaskPlan:
    """Blocked plan of a (d, d) bool mask for images of ``shape`` and ``batch`` inputs per call; ``tile``
    (pixels) is chosen by a cost model when None (square tiles, at most ``MAX_BLOCKS`` of them). The blocks
    are executed in padded groups (`group_blocks` with ``slack``)."""
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
    grouped = group_blocks(blocks, d, slack)
    groups = [_padded_group(members, d) for members in grouped]
    return MaskPlan(tuple(blocks), perm, torch.argsort(perm), full, tile, work + (d if full else 0), int(mask.sum()),
                    tuple(groups), _group_layout(grouped, groups, d))


# ---------------------------------------------------------------- the engine: a few padded groups of blocks

@dataclass(frozen=True, eq=False)
class BlockGroup:
    """Blocks of one kind (over all rows, gathered, gathered complement) and similar row counts, padded to one
    shape so that one GEMM, or one batched GEMM, per training chunk computes all of their logits.

    Padding is neutral: a padded column repeats its block's last column (its outputs are dropped by the plan's
    ``layout``), a padded row is row 0 with weight 0 (it adds exactly 0 to every distance), and in a group over
    all rows each block's weights sit at their own rows (a block that uses fewer rows gets zero weights
    elsewhere). A complement group adds the full distance to minus its blocks' complement sums, the same terms as
    the unpadded block.
    """

    cols: torch.Tensor          # (g, c) output coordinates, padded
    rows: torch.Tensor | None   # (g, r) input coordinates, padded; None: all d rows in order (no gather)
    weight: torch.Tensor        # (g, c, r) 0/1 float ((g, c, d) when rows is None)
    complement: bool            # every block of the group is in complement form


def group_blocks(blocks: list[Block] | tuple[Block, ...], d: int, slack: float = GROUP_SLACK) -> list[list[Block]]:
    """Blocks split by kind (over all ``d`` rows / gathered; complement or not), gathered ones by column count
    (edge tiles are narrower) and sorted by row count, cut wherever a block has fewer than ``slack`` times the
    rows of its group's first: padding every block of a group to its largest wastes at most 1 - slack of its
    work."""
    groups: list[list[Block]] = []
    widths = sorted({len(b.cols) for b in blocks}, reverse=True)
    for all_rows in (True, False):
        for comp in (False, True):
            kind = [b for b in blocks if (len(b.rows) == d) == all_rows and b.complement == comp]
            if all_rows:
                groups += [kind] if kind else []
                continue
            for width in widths:
                start = len(groups)
                for b in sorted((b for b in kind if len(b.cols) == width), key=lambda b: -len(b.rows)):
                    if len(groups) > start and len(b.rows) >= slack * len(groups[-1][0].rows):
                        groups[-1].append(b)
                    else:
                        groups.append([b])
    return groups


def _padded_group(blocks: list[Block], d: int) -> BlockGroup:
    """One `BlockGroup` of ``blocks`` (all of one kind)."""
    c, r = max(len(b.cols) for b in blocks), max(len(b.rows) for b in blocks)
    all_rows = all(len(b.rows) == d for b in blocks)
    cols = torch.stack([b.cols[torch.arange(c).clamp(max=len(b.cols) - 1)] for b in blocks])
    rows = torch.zeros(len(blocks), r, dtype=torch.long)
    weight = torch.zeros(len(blocks), c, d if all_rows else r)
    for i, b in enumerate(blocks):
        if all_rows:                                        # weights at the block's own rows
            weight[i, :len(b.cols)].index_copy_(1, b.rows, b.weight)
        else:                                               # padded rows: row 0, weight 0
            rows[i, :len(b.rows)] = b.rows
            weight[i, :len(b.cols), :len(b.rows)] = b.weight
    return BlockGroup(cols, None if all_rows else rows, weight, blocks[0].complement)


def _group_layout(grouped: list[list[Block]], groups: list[BlockGroup], d: int) -> torch.Tensor:
    """(d,) position of output coordinate m among the groups' concatenated (g * c) columns."""
    layout, offset = torch.full((d,), -1, dtype=torch.long), 0
    for members, grp in zip(grouped, groups, strict=True):
        width = grp.cols.shape[1]
        for i, b in enumerate(members):
            layout[b.cols] = offset + i * width + torch.arange(len(b.cols))
        offset += grp.cols.numel()
    if bool((layout < 0).any()):
        raise ValueError("the plan's blocks do not cover every output coordinate")
    return layout


def work_form(dtype: torch.dtype, sigma: float, B: int) -> tuple[torch.dtype, bool]:
    """(work dtype, direct terms) of a call with ``B`` inputs of ``dtype`` at ``sigma``.

    One input is computed in float32 down to DIRECT_FLOAT64_BELOW (`softmax`'s precision policy): its logits come
    from one GEMM over per-pixel terms, direct (x - x0)^2 below DIRECT_BELOW and expanded above, and float32 runs
    at 2.4x float64's GEMM rate. Where to switch was measured (Fashion-MNIST, 20,000 training images, 4 inputs
    one at a time, float32 against float64): direct 1.6-5.0e-6 below sigma 0.4 and up to 1.1e-5 near sigma 1
    (a mask sums hundreds of noisy terms there), expanded 1.5-6.3e-6 from 0.4 up and 9.6e-6 at 0.2. A batch keeps
    the expanded and cross terms, whose gathered rows serve every input (direct terms are per input: B times the
    gathered data), in float64 below FLOAT64_BELOW: in float32 the cross form's two GEMMs cancel to 1.7e-5 at
    sigma 0.34, past the 1e-5 the engine is held to.
    """
    direct = B == 1 and sigma < DIRECT_BELOW
    if dtype != torch.float32:
        return dtype, direct
    wide = sigma < DIRECT_FLOAT64_BELOW if B == 1 else sigma < FLOAT64_BELOW
    return (torch.float64 if wide else dtype), direct


def _uses_terms(grp: BlockGroup, B: int) -> bool:
    """Whether a group's logits come from one GEMM over the per-input terms e (`_input_terms`) of all inputs
    (any group for one input; wide groups over all rows) rather than from the cross and square GEMMs. A
    narrow group over all rows keeps the cross form, whose GEMM has B times as many rows (a GEMM of few rows
    runs far below peak)."""
    return B == 1 or (grp.rows is None and grp.cols.numel() >= EXPANDED_MIN_COLUMNS)


def executed_flop(plan: MaskPlan, batch: int) -> float:
    """FLOP per training image of one call with ``batch`` inputs, as the engine executes ``plan`` (padding
    included): per group 2 g c r multiply-adds per input with the per-input terms, and per input plus one for the
    shared x0^2 term in the cross form; plus the full distances' cross term when the plan needs them and no
    group computes the terms they sum."""
    needs_cross = plan.needs_full and not any(_uses_terms(grp, batch) for grp in plan.groups)
    total = 2.0 * batch * plan.inverse.numel() if needs_cross else 0.0
    for grp in plan.groups:
        total += 2.0 * grp.weight.numel() * (batch if _uses_terms(grp, batch) else batch + 1)
    return total


def _group_weights(xw: torch.Tensor, plan: MaskPlan, scale: float) -> list[tuple[torch.Tensor, ...]]:
    """Per group the left factors of its GEMMs, the scale folded in.

    Per-input terms (`_uses_terms`): ``scale * weight`` (g * c, d) over all rows, or (g, c, r) gathered.
    Otherwise ``scale * weight`` (g, c, r) for the x0^2 term and ``-2 scale * weight * x_b[rows]``
    (g, c * B, r) for the cross term, so that one batched GEMM serves all B inputs.
    """
    B, out = len(xw), []
    for grp in plan.groups:
        w = grp.weight.to(xw) * scale                                          # (g, c, r)
        if _uses_terms(grp, B):
            out.append((w.reshape(-1, w.shape[2]) if grp.rows is None else w,))
            continue
        xr = (xw[None] if grp.rows is None else xw[:, grp.rows].permute(1, 0, 2))  # (g or 1, B, r)
        cross = -2.0 * w[:, :, None, :] * xr[:, None, :, :]                     # (g, c, B, r)
        if grp.rows is None:                                                    # one GEMM over all rows
            out.append((w.reshape(-1, w.shape[2]), cross.reshape(-1, w.shape[2])))
        else:
            out.append((w, cross.reshape(len(w), w.shape[1] * B, w.shape[2])))
    return out


class _Workspace:
    """Buffers reused by every chunk of one call (no autograd): a fresh multi-MB tensor per chunk and step costs
    page faults on first touch, about as much as the step itself."""

    def __init__(self, device: torch.device):
        self.device, self.buffers = device, {}

    def get(self, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        n = math.prod(shape)
        buf = self.buffers.get(name)
        if buf is None or buf.numel() < n or buf.dtype != dtype:
            buf = self.buffers[name] = torch.empty(n, dtype=dtype, device=self.device)
        return buf[:n].view(shape)


def _group_logits(grp: BlockGroup, w: tuple[torch.Tensor, ...], x0T: torch.Tensor, x0T_sq: torch.Tensor | None,
                  e: torch.Tensor | None, full: torch.Tensor | None, B: int, ws: _Workspace | None) -> torch.Tensor:
    """(g * c, B, K) logits of one group's (padded) columns for a chunk x0T (d, K) of training images.

    logit = scale * sum_rows weight * (x0^2 - 2 x x0): the squared distance minus its k-independent part
    sum x^2, which the softmax ignores (the whole distance with direct terms). ``e`` (d, B, K): the per-input
    terms, expanded x0^2 - 2 x x0 or direct (x - x0)^2 (`_input_terms`; None when no group uses them);
    ``x0T_sq`` (d, K) squares (None when no group over all rows uses the cross form). Complement groups: the
    full distance ``full`` (B, K) minus the sum over the complement. ``ws``: buffers to compute into (None
    under autograd).
    """
    g, c = grp.cols.shape
    K = x0T.shape[1]
    shape = (g * c, B, K)
    out = None if ws is None else ws.get("logits", shape, x0T.dtype)
    if grp.rows is None and len(w) == 1:                                    # one GEMM over all rows
        e2 = e.view(len(e), B * K)
        logits = (w[0] @ e2 if out is None else torch.mm(w[0], e2, out=out.view(g * c, B * K))).view(shape)
    elif grp.rows is None:                                                  # cross and (shared) square terms
        sq = (w[0] @ x0T_sq).view(g * c, 1, K)
        logits = (w[1] @ x0T if out is None else torch.mm(w[1], x0T, out=out.view(g * c * B, K))).view(shape)
        logits = logits + sq if ws is None else logits.add_(sq)
    elif grp.rows.shape[1] == 0:
        logits = x0T.new_zeros(shape)
    else:                                                                   # one gather per group and chunk
        idx, r = grp.rows.flatten(), grp.rows.shape[1]
        src = e.view(-1, K) if B == 1 else x0T
        rows = src.index_select(0, idx) if ws is None else torch.index_select(
            src, 0, idx, out=ws.get("rows", (len(idx), K), src.dtype))
        rows = rows.view(g, r, K)
        if B == 1:                                                          # per-input terms: one batched GEMM
            logits = (torch.bmm(w[0], rows) if out is None else torch.bmm(w[0], rows, out=out.view(g, c, K)))
        else:                                                               # cross and (shared) square terms
            rows_sq = rows * rows if ws is None else torch.mul(rows, rows, out=ws.get("sq", rows.shape, rows.dtype))
            sq = torch.bmm(w[0], rows_sq).view(g * c, 1, K)
            logits = torch.bmm(w[1], rows) if out is None else torch.bmm(w[1], rows, out=out.view(g, c * B, K))
            logits = logits.view(shape)
            logits = logits + sq if ws is None else logits.add_(sq)
        logits = logits.view(shape)
    if not grp.complement:
        return logits
    return full - logits if ws is None else torch.sub(full, logits, out=logits)


def _input_terms(x0T: torch.Tensor, xf: torch.Tensor, ws: _Workspace | None, direct: bool) -> torch.Tensor:
    """(d, B, K) terms of a chunk x0T (d, K) and inputs xf (B, d), contiguous: e = x0^2 - 2 x x0 = x0 (x0 - 2 x),
    or, ``direct``, e = (x0 - x)^2 (`work_form`)."""
    if ws is None:
        diff = x0T[:, None, :] - (1.0 if direct else 2.0) * xf.T[:, :, None]
        return (diff * (diff if direct else x0T[:, None, :])).contiguous()
    e = ws.get("e", (x0T.shape[0], len(xf), x0T.shape[1]), x0T.dtype)
    torch.sub(x0T[:, None, :], xf.T[:, :, None] if direct else 2.0 * xf.T[:, :, None], out=e)
    return e.mul_(e if direct else x0T[:, None, :])


def _state2(logits: torch.Tensor, values: torch.Tensor, dtype: torch.dtype, ws: _Workspace | None) -> SoftmaxState:
    """(m, s, acc), each (G, B), of logits (G, B, K) in base-2 units and values (G, K): m = max_k logits,
    s = sum_k 2^(logits - m), acc = sum_k 2^(logits - m) values, the last two in ``dtype``.

    In place when ``ws`` is given (no autograd): a max, a shift, (a cast), an exp2, a sum and a product-sum over
    the chunk, which is sized to stay in cache. exp2 has no slow path for large negative arguments (exp's,
    below -87 in float32, is 10x slower), so no clamp is needed.
    """
    m = logits.amax(dim=2)
    ref = finite_or_zero(m)[..., None]
    if ws is None:
        p = torch.exp2((logits - ref).to(dtype))
        return SoftmaxState(m, p.sum(2), (p * values[:, None, :]).sum(2))
    p = logits.sub_(ref)
    if p.dtype != dtype:
        p = ws.get("p", p.shape, dtype).copy_(p)
    p.exp2_()
    return SoftmaxState(m, p.sum(2), p.mul_(values[:, None, :]).sum(2))


def _chunk_size(plan: MaskPlan, B: int, N: int, chunk_size: int | None, batch_normalised: bool,
                itemsize: int = 4) -> int:
    """Training images per chunk: the widest group's logits within GROUP_ELEMENTS float32 numbers (half as many
    of ``itemsize`` 8), times THREADED_CHUNKS with several torch threads (each operation ends in a wait for
    every thread: fewer, larger ones)."""
    if batch_normalised:
        return REFERENCE_BATCH
    widest = max(grp.cols.numel() for grp in plan.groups)
    budget = GROUP_ELEMENTS * 4 // itemsize * (THREADED_CHUNKS if torch.get_num_threads() > 1 else 1)
    return chunk_size or int(min(max(N, 1), max(MIN_CHUNK, budget // (B * widest))))


def _chunk_group_states(x: torch.Tensor, sigma: float, train: torch.Tensor, plan: MaskPlan, chunk_size: int,
                        centre: torch.Tensor | None) -> Iterator[SoftmaxState]:
    """Per chunk of ``chunk_size`` training images, the softmax state (m, s, acc), each (G, B) over the groups'
    concatenated padded columns, m in base-2 units (logits times log2 e): per group one gather, one or two
    (batched) GEMMs and one softmax pass, all while the chunk's logits are in cache.

    Each chunk is transposed once so that groups gather contiguous rows. Without autograd every chunk computes
    into the same buffers; under autograd each chunk is checkpointed.
    """
    B, d = x.shape
    dtype, direct = work_form(x.dtype, sigma, B)
    centre = torch.zeros(d, dtype=dtype, device=x.device) if centre is None else centre.to(x.device, dtype)
    xw = x.to(dtype) - centre
    scale = -LOG2E / (2.0 * sigma**2)                       # base-2 logits: exp2 is 3x faster than exp
    need_e = any(_uses_terms(grp, B) for grp in plan.groups)
    need_sq = any(grp.rows is None and not _uses_terms(grp, B) for grp in plan.groups)
    grad = torch.is_grad_enabled() and x.requires_grad
    ws = _Workspace(x.device) if derivative_free([x, train, centre]) else None  # in place only without derivatives

    def chunk_states(xf: torch.Tensor, start: int, *weights: torch.Tensor) -> tuple[torch.Tensor, ...]:
        chunk = train[start:start + chunk_size].T                                              # (d, K)
        if ws is None:
            values = chunk.to(device=xf.device, dtype=x.dtype).contiguous()
            x0T = values.to(dtype) - centre[:, None]
        else:
            values = ws.get("values", chunk.shape, x.dtype).copy_(chunk)
            x0T = torch.sub(values, centre[:, None], out=ws.get("x0T", chunk.shape, dtype))
        e = _input_terms(x0T, xf, ws, direct) if need_e else None
        x0T_sq = None if not need_sq else x0T * x0T if ws is None else torch.mul(
            x0T, x0T, out=ws.get("x0T_sq", x0T.shape, x0T.dtype))
        if plan.needs_full and e is not None:                  # (B, K): the terms, summed over all rows
            full = scale * e.sum(0)
        elif plan.needs_full:                                  # (B, K): the same from the squares and x @ x0
            full = scale * ((x0T * x0T if x0T_sq is None else x0T_sq).sum(0)[None] - 2.0 * (xf @ x0T))
        else:
            full = None
        states, i = [], 0
        for grp, n in zip(plan.groups, counts, strict=True):
            logits = _group_logits(grp, weights[i:i + n], x0T, x0T_sq, e, full, B, ws)
            idx = grp.cols.flatten()
            v = values.index_select(0, idx) if ws is None else torch.index_select(
                values, 0, idx, out=ws.get("v", (len(idx), values.shape[1]), values.dtype))
            states.append(_state2(logits, v, x.dtype, ws))
            i += n
        return SoftmaxState(*(torch.cat(parts) for parts in zip(*states, strict=True)))

    grouped = _group_weights(xw, plan, scale)
    counts = [len(w) for w in grouped]
    weights = [w for ws_ in grouped for w in ws_]
    for start in range(0, len(train), chunk_size):
        if grad:
            yield checkpoint(chunk_states, xw, start, *weights, use_reentrant=False)
        else:
            yield chunk_states(xw, start, *weights)


def _output_order(plan: MaskPlan, t: torch.Tensor) -> torch.Tensor:
    """(B, d) in output order from a (G, B) tensor over the groups' padded columns."""
    return t.index_select(0, plan.layout).T.contiguous()


def masked_softmax_state(x: torch.Tensor, sigma: float, train: torch.Tensor, plan: MaskPlan, *,
                         chunk_size: int | None = None, centre: torch.Tensor | None = None) -> SoftmaxState:
    """The per-coordinate softmax state (m, s, acc each (B, d), output order) of the masked softmax denoiser
    over ``train`` (N, d), which may be empty (the empty state). States of disjoint shards merge exactly;
    `finish` gives x0_hat. With several torch threads (and no derivatives) the training set is split over
    threads, one torch thread each (`softmax.threaded_state`)."""
    return threaded_state(lambda part: _masked_state(x, sigma, train[part], plan, chunk_size, centre), len(train),
                          inputs=(x, train, centre))


def _masked_state(x: torch.Tensor, sigma: float, train: torch.Tensor, plan: MaskPlan, chunk_size: int | None,
                  centre: torch.Tensor | None) -> SoftmaxState:
    """`masked_softmax_state` in the calling thread."""
    B, d = x.shape
    dtype = work_form(x.dtype, sigma, B)[0]
    chunk_size = _chunk_size(plan, B, len(train), chunk_size, False, dtype.itemsize)
    total = merge_all(_chunk_group_states(x, sigma, train, plan, chunk_size, centre), exp=torch.exp2)
    if total is None:
        return empty_state((B, d), (B, d), dtype=x.dtype, m_dtype=dtype, device=x.device)
    m, s, acc = (_output_order(plan, t) for t in total)
    return SoftmaxState(m * math.log(2.0), s, acc)          # m back to natural-log units


def masked_softmax_denoise(x: torch.Tensor, sigma: float, train: torch.Tensor, plan: MaskPlan, *,
                           chunk_size: int | None = None, batch_normalised: bool = False,
                           centre: torch.Tensor | None = None, shard_merge: ShardMerge | None = None
                           ) -> torch.Tensor:
    """x0_hat (B, d) of the per-coordinate softmax denoiser with mask ``plan`` at one ``sigma``.

    x (B, d); train (N, d), streamed in chunks of ``chunk_size`` images (default: a cache-sized budget; 512
    when ``batch_normalised``). The terms and their precision follow `work_form`.
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
    results = [_output_order(plan, acc / s)
               for _, s, acc in _chunk_group_states(x, sigma, train, plan, chunk_size, centre)]
    return torch.stack(results).mean(0).to(x.dtype)


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

    rows = []
    with torch.no_grad():
        for i, (sigma, x) in enumerate(zip(sigmas, noisy_heldout(dataset.test[:n], sigmas, seed), strict=True)):
            diff = (exact(x, sigma) - batched(x, sigma)).abs()
            t = REFERENCE_TIMESTEPS[i] if sigmas == list(REFERENCE_SIGMAS) else None
            rows.append({"t": t, "sigma": sigma, "max_abs_diff": float(diff.max()),
                         "mean_abs_diff": float(diff.mean())})
    return rows
