"""The engine behind the masked softmax denoisers (`analytical.MaskedSoftmaxDenoiser`): the formula of
`analytical.analytical_dense` computed as a few dense GEMMs per chunk of training images.

x0_hat[m] = sum_k softmax_k(-dist_k[m] / (2 sigma^2)) x0_k[m], dist_k[m] = sum_n B[n, m] (x[n] - x0_k[n])^2, for a
(d, d) bool mask B whose column m is the neighbourhood of output coordinate m.

Glossary
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
                mean first (distances do not change, the terms get smaller)
    form        the work dtype and the kind of terms, `softmax.PRECISION.masked`: one input runs in float32 down
                to sigma 0.05 and sums the direct terms (x - x0)^2 below sigma 0.4; a batch runs in float32 down
                to sigma 0.15, in the compensated cross form below sigma 1, and in float64 below 0.15
    compensated the cross form of a batch as one GEMM over a table of the chunk's x0c^2, x0c and ones
                (`_compensation_table`), interleaved so that its partial sums stay near the distance
                (`_compensated_weights`): float32 round-off of small sums instead of two large ones that cancel
    workspace   buffers that every chunk of a call computes into (`Workspace`); under autograd none: each
                operation then allocates its result (``out=None``)
    batch-normalised  the public reference code's variant: the softmax normalised within each batch of
                REFERENCE_BATCH training images, the batch results then averaged (`analytical`'s glossary)
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from locality_core.denoisers.softmax import (
    PRECISION,
    ShardMerge,
    SoftmaxState,
    WorkForm,
    derivative_free,
    empty_state,
    finish,
    finite_or_zero,
    merge_all,
    threaded_map,
    threaded_state,
)

REFERENCE_BATCH = 512        # the public code's batch of training images (batch-normalised variant)
GROUP_ELEMENTS = 1 << 21     # B * chunk * a group's padded columns: its logits stay in L3 (8 MB float32)
THREADED_CHUNKS = 2          # chunks this many times larger in a call that runs several threads itself (one
                             # not split over threads: `softmax.threaded_state`): half the operations
EXPANDED_MIN_COLUMNS = 128   # groups over all rows this wide use the per-input terms (see `_uses_terms`)
MIN_CHUNK = 64               # training images per chunk at least: fewer would be mostly per-operation overhead
GROUP_SLACK = 0.95           # gathered blocks padded together have at least this share of their group's rows
LOG2E = 1.0 / math.log(2.0)  # logits in base-2 units: exp2 instead of exp
MAX_BLOCKS = 64
COMPENSATION_ROWS = 16       # pixels between rows of ones in the compensated cross form (`_compensated_index`)


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


def _uses_terms(grp: BlockGroup, B: int) -> bool:
    """Whether a group's logits come from one GEMM over the per-input terms e (`_input_terms`) of all inputs
    (any group for one input; wide groups over all rows) rather than from the cross and square GEMMs. A
    narrow group over all rows keeps the cross form, whose GEMM has B times as many rows (a GEMM of few rows
    runs far below peak)."""
    return B == 1 or (grp.rows is None and grp.cols.numel() >= EXPANDED_MIN_COLUMNS)


def executed_flop(plan: MaskPlan, batch: int, compensated: bool = False) -> float:
    """FLOP per training image of one call with ``batch`` inputs, as the engine executes ``plan`` (padding
    included): per group 2 g c r multiply-adds per input with the per-input terms, and per input plus one for the
    shared x0^2 term in the cross form; plus the full distances' cross term when the plan needs them and no
    group computes the terms they sum. ``compensated``: per group 2 g c L per input, L the table rows it sums,
    plus those of the full distances."""
    if compensated:
        d = plan.inverse.numel()
        total = sum(2.0 * batch * grp.cols.numel() * _table_rows(d if grp.rows is None else grp.rows.shape[1])
                    for grp in plan.groups)
        return total + (2.0 * batch * _table_rows(d) if plan.needs_full else 0.0)
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


def _table_rows(r: int) -> int:
    """Rows of the compensation table that a block over ``r`` input rows sums (`_compensated_index`)."""
    return -(-r // COMPENSATION_ROWS) * (2 * COMPENSATION_ROWS + 1)


def _compensated_index(rows: torch.Tensor, d: int) -> torch.Tensor:
    """(g, L) rows of the compensation table (`_compensation_table`) that blocks summing over input rows ``rows``
    (g, r) read: per row n, 2n (x0c_n^2) and 2n + 1 (x0c_n), and after every COMPENSATION_ROWS of them the row of
    ones 2d; r padded to a multiple of COMPENSATION_ROWS with row 0 (whose weights are 0)."""
    g, r = rows.shape
    runs = -(-r // COMPENSATION_ROWS)
    padded = F.pad(rows, (0, runs * COMPENSATION_ROWS - r))
    pairs = torch.stack([2 * padded, 2 * padded + 1], -1).view(g, runs, 2 * COMPENSATION_ROWS)
    ones = torch.full((g, runs, 1), 2 * d, dtype=torch.long)
    return torch.cat([pairs, ones], -1).view(g, -1)


def _compensated_weights(w: torch.Tensor, xr: torch.Tensor, sigma: float, dtype: torch.dtype) -> torch.Tensor:
    """(g, c * B, L) left factor of the compensated cross form in ``dtype``, in `_compensated_index` order, for
    weights w (g, c, r) (the scale folded in) and the centred inputs at the blocks' rows xr (g, B, r), both
    float64: per row, w (times x0c^2) and -2 w x (times x0c); per run of COMPENSATION_ROWS rows, the sum of
    w (x^2 - sigma^2) (times 1). Summed in that order, the GEMM's partial sums follow the distance minus sigma^2
    per row, which is small for the training images that carry the softmax's weight, instead of growing to
    sum x0c^2 and -2 sum x x0c apart (two large sums whose difference would keep their float32 round-off)."""
    (g, c, r), B = w.shape, xr.shape[1]
    runs = -(-r // COMPENSATION_ROWS)
    w = F.pad(w, (0, runs * COMPENSATION_ROWS - r)).view(g, c, 1, runs, COMPENSATION_ROWS)
    xr = F.pad(xr, (0, runs * COMPENSATION_ROWS - r)).view(g, 1, B, runs, COMPENSATION_ROWS)
    out = w.new_empty((g, c, B, runs, 2 * COMPENSATION_ROWS + 1), dtype=dtype)
    out[..., 0:-1:2] = w
    out[..., 1:-1:2] = -2.0 * w * xr
    out[..., -1] = (w * (xr * xr - sigma**2)).sum(-1)
    return out.view(g, c * B, -1)


def _compensated_group_weights(xw: torch.Tensor, plan: MaskPlan, scale: float, sigma: float, dtype: torch.dtype
                               ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per group (weights (g, c * B, L) in ``dtype``, table rows (g, L)) of the compensated cross form, from the
    centred inputs xw (B, d) in float64; a group over all rows is one block over rows 0 .. d - 1. When the plan
    needs full distances, one more entry: a block of one column over all rows, whose sums are the full
    distances (B, K)."""
    B, d = xw.shape
    every_row = torch.arange(d)[None]
    blocks = [(grp.weight.reshape(1, -1, d), every_row) if grp.rows is None else (grp.weight, grp.rows)
              for grp in plan.groups]
    if plan.needs_full:
        blocks.append((torch.ones(1, 1, d), every_row))
    out = []
    for weight, rows in blocks:
        xr = xw[:, rows].permute(1, 0, 2)                                              # (g, B, r)
        w = _compensated_weights(weight.to(xw) * scale, xr, sigma, dtype)
        out.append((w, _compensated_index(rows, d)))
    return out


def _compensation_table(x0T: torch.Tensor, ws: Workspace) -> torch.Tensor:
    """(2 d + 1, K) rows the compensated cross form gathers from a chunk x0T (d, K) of centred training images:
    2n = x0c_n^2, 2n + 1 = x0c_n, and a last row of ones."""
    (d, K), dtype = x0T.shape, x0T.dtype
    square = torch.mul(x0T, x0T, out=ws.out("x0T_sq", (d, K), dtype))
    pairs = torch.stack([square, x0T], 1, out=ws.out("pairs", (d, 2, K), dtype)).view(2 * d, K)
    return torch.cat([pairs, x0T.new_ones(1, K)], out=ws.out("table", (2 * d + 1, K), dtype))


def _compensated_sum(w: torch.Tensor, rows: torch.Tensor, table: torch.Tensor, ws: Workspace, name: str
                     ) -> torch.Tensor:
    """(g, c * B, K): the weights w (g, c * B, L) times the table's rows ``rows`` (g, L): one gather, one GEMM."""
    K = table.shape[1]
    gathered = torch.index_select(table, 0, rows.flatten(), out=ws.out("rows", (rows.numel(), K), table.dtype))
    return torch.bmm(w, gathered.view(*rows.shape, K), out=ws.out(name, (len(w), w.shape[1], K), table.dtype))


class Workspace:
    """Buffers reused by every chunk of one call: a fresh multi-MB tensor per chunk and step costs page faults on
    first touch, about as much as the step itself. A workspace that must not compute in place (``reuse`` False:
    a derivative could flow through the call) hands out no buffer, so that ``torch.op(..., out=ws.out(...))``
    is one call for both: with ``out=None`` the operation allocates its result, as autograd needs."""

    def __init__(self, device: torch.device, reuse: bool = True):
        self.device, self.reuse, self.buffers = device, reuse, {}

    def out(self, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor | None:
        """The buffer ``name`` viewed as ``shape`` (grown as needed), or None without reuse."""
        if not self.reuse:
            return None
        n = math.prod(shape)
        buf = self.buffers.get(name)
        if buf is None or buf.numel() < n or buf.dtype != dtype:
            buf = self.buffers[name] = torch.empty(n, dtype=dtype, device=self.device)
        return buf[:n].view(shape)

    def inplace(self, t: torch.Tensor) -> torch.Tensor | None:
        """``t`` itself as the ``out`` of an operation on it, or None without reuse."""
        return t if self.reuse else None

    def converted(self, name: str, t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """``t`` in ``dtype``, contiguous, on the workspace's device: ``t`` itself when it already is, else a copy
        (into the buffer ``name`` when reused)."""
        if t.dtype == dtype and t.is_contiguous() and t.device == self.device:
            return t
        out = self.out(name, tuple(t.shape), dtype)
        return t.to(device=self.device, dtype=dtype).contiguous() if out is None else out.copy_(t)


def _group_logits(grp: BlockGroup, w: tuple[torch.Tensor, ...], x0T: torch.Tensor, x0T_sq: torch.Tensor | None,
                  e: torch.Tensor | None, full: torch.Tensor | None, B: int, ws: Workspace,
                  table: torch.Tensor | None = None) -> torch.Tensor:
    """(g * c, B, K) logits of one group's (padded) columns for a chunk x0T (d, K) of training images.

    logit = scale * sum_rows weight * (x0^2 - 2 x x0): the squared distance minus its k-independent part
    sum x^2, which the softmax ignores (the whole distance with direct terms). ``e`` (d, B, K): the per-input
    terms, expanded x0^2 - 2 x x0 or direct (x - x0)^2 (`_input_terms`; None when no group uses them);
    ``x0T_sq`` (d, K) squares (None when no group over all rows uses the cross form). Complement groups: the
    full distance ``full`` (B, K) minus the sum over the complement. ``table``: the compensated cross form's
    rows (`_compensation_table`; None in the other forms), which ``w`` (weights, rows) sums.
    """
    g, c = grp.cols.shape
    K, dtype = x0T.shape[1], x0T.dtype
    shape = (g * c, B, K)
    if table is not None:                                                   # compensated: one gather, one GEMM
        logits = _compensated_sum(*w, table, ws, "logits")
    elif grp.rows is None and len(w) == 1:                                  # one GEMM over all rows
        logits = torch.mm(w[0], e.view(len(e), B * K), out=ws.out("logits", (g * c, B * K), dtype))
    elif grp.rows is None:                                                  # cross and (shared) square terms
        sq = (w[0] @ x0T_sq).view(g * c, 1, K)
        logits = torch.mm(w[1], x0T, out=ws.out("logits", (g * c * B, K), dtype)).view(shape)
        logits = torch.add(logits, sq, out=ws.inplace(logits))
    elif grp.rows.shape[1] == 0:
        logits = x0T.new_zeros(shape)
    else:                                                                   # one gather per group and chunk
        idx, r = grp.rows.flatten(), grp.rows.shape[1]
        src = e.view(-1, K) if B == 1 else x0T
        rows = torch.index_select(src, 0, idx, out=ws.out("rows", (len(idx), K), src.dtype)).view(g, r, K)
        if B == 1:                                                          # per-input terms: one batched GEMM
            logits = torch.bmm(w[0], rows, out=ws.out("logits", (g, c, K), dtype))
        else:                                                               # cross and (shared) square terms
            rows_sq = torch.mul(rows, rows, out=ws.out("sq", tuple(rows.shape), rows.dtype))
            sq = torch.bmm(w[0], rows_sq).view(g * c, 1, K)
            logits = torch.bmm(w[1], rows, out=ws.out("logits", (g, c * B, K), dtype)).view(shape)
            logits = torch.add(logits, sq, out=ws.inplace(logits))
    logits = logits.view(shape)
    return torch.sub(full, logits, out=ws.inplace(logits)) if grp.complement else logits


def _input_terms(x0T: torch.Tensor, xf: torch.Tensor, ws: Workspace, direct: bool) -> torch.Tensor:
    """(d, B, K) terms of a chunk x0T (d, K) and inputs xf (B, d), contiguous: e = x0^2 - 2 x x0 = x0 (x0 - 2 x),
    or, ``direct``, e = (x0 - x)^2 (`softmax.PRECISION`)."""
    shape = (x0T.shape[0], len(xf), x0T.shape[1])
    e = torch.sub(x0T[:, None, :], xf.T[:, :, None] if direct else 2.0 * xf.T[:, :, None],
                  out=ws.out("e", shape, x0T.dtype))
    return torch.mul(e, e if direct else x0T[:, None, :], out=ws.inplace(e)).contiguous()


def _state2(logits: torch.Tensor, values: torch.Tensor, dtype: torch.dtype, ws: Workspace) -> SoftmaxState:
    """(m, s, acc), each (G, B), of logits (G, B, K) in base-2 units and values (G, K): m = max_k logits,
    s = sum_k 2^(logits - m), acc = sum_k 2^(logits - m) values, the last two in ``dtype``.

    A max, a shift, (a cast), an exp2, a sum and a product-sum over the chunk, which is sized to stay in cache,
    in place when the workspace allows. exp2 has no slow path for large negative arguments (exp's, below -87 in
    float32, is 10x slower), so no clamp is needed.
    """
    m = logits.amax(dim=2)
    p = torch.sub(logits, finite_or_zero(m)[..., None], out=ws.inplace(logits))
    p = ws.converted("p", p, dtype)
    p = torch.exp2(p, out=ws.inplace(p))
    return SoftmaxState(m, p.sum(2), torch.mul(p, values[:, None, :], out=ws.inplace(p)).sum(2))


def _chunk_size(plan: MaskPlan, B: int, N: int, chunk_size: int | None, itemsize: int = 4) -> int:
    """Training images per chunk: the widest group's logits within GROUP_ELEMENTS float32 numbers (half as many
    of ``itemsize`` 8), times THREADED_CHUNKS with several torch threads (each operation ends in a wait for
    every thread: fewer, larger ones)."""
    widest = max(grp.cols.numel() for grp in plan.groups)
    budget = GROUP_ELEMENTS * 4 // itemsize * (THREADED_CHUNKS if torch.get_num_threads() > 1 else 1)
    return chunk_size or int(min(max(N, 1), max(MIN_CHUNK, budget // (B * widest))))


def _chunk_group_states(x: torch.Tensor, sigma: float, train: torch.Tensor, plan: MaskPlan, chunk_size: int,
                        centre: torch.Tensor | None, form: WorkForm) -> Iterator[SoftmaxState]:
    """Per chunk of ``chunk_size`` training images, the softmax state (m, s, acc), each (G, B) over the groups'
    concatenated padded columns, m in base-2 units (logits times log2 e): per group one gather, one or two
    (batched) GEMMs and one softmax pass, all while the chunk's logits are in cache. ``form``: the work dtype
    and terms (`softmax.PRECISION.masked`).

    Each chunk is transposed once so that groups gather contiguous rows. Without autograd every chunk computes
    into the same buffers; under autograd each chunk is checkpointed.
    """
    B, d = x.shape
    dtype = form.dtype
    centre = torch.zeros(d, dtype=dtype, device=x.device) if centre is None else centre.to(x.device, dtype)
    xw = x.to(dtype) - centre
    scale = -LOG2E / (2.0 * sigma**2)                       # base-2 logits: exp2 is 3x faster than exp
    need_e = not form.compensated and any(_uses_terms(grp, B) for grp in plan.groups)
    need_sq = not form.compensated and any(grp.rows is None and not _uses_terms(grp, B) for grp in plan.groups)
    grad = torch.is_grad_enabled() and x.requires_grad
    ws = Workspace(x.device, reuse=derivative_free([x, train, centre]))   # in place only without derivatives

    def chunk_states(xf: torch.Tensor, start: int, *weights: torch.Tensor) -> tuple[torch.Tensor, ...]:
        values = ws.converted("values", train[start:start + chunk_size].T, x.dtype)            # (d, K)
        x0T = torch.sub(values, centre[:, None], out=ws.out("x0T", tuple(values.shape), dtype))
        table = e = x0T_sq = full = None
        if form.compensated:
            table = _compensation_table(x0T, ws)
            if plan.needs_full:                                # (B, K): the last block sums over all rows
                full = _compensated_sum(*weights[-2:], table, ws, "full").view(B, -1)
        else:
            e = _input_terms(x0T, xf, ws, form.direct) if need_e else None
            x0T_sq = torch.mul(x0T, x0T, out=ws.out("x0T_sq", tuple(x0T.shape), dtype)) if need_sq else None
        if plan.needs_full and e is not None:                  # (B, K): the terms, summed over all rows
            full = scale * e.sum(0)
        elif plan.needs_full and table is None:                # (B, K): the same from the squares and x @ x0
            full = scale * ((x0T * x0T if x0T_sq is None else x0T_sq).sum(0)[None] - 2.0 * (xf @ x0T))
        states, i = [], 0
        for grp, n in zip(plan.groups, counts, strict=True):
            logits = _group_logits(grp, weights[i:i + n], x0T, x0T_sq, e, full, B, ws, table)
            idx = grp.cols.flatten()
            v = torch.index_select(values, 0, idx, out=ws.out("v", (len(idx), values.shape[1]), values.dtype))
            states.append(_state2(logits, v, x.dtype, ws))
            i += n
        return SoftmaxState(*(torch.cat(parts) for parts in zip(*states, strict=True)))

    if form.compensated:                                     # weights from float64 inputs: rounded once
        grouped = _compensated_group_weights(x.double() - centre.double(), plan, scale, sigma, dtype)
    else:
        grouped = _group_weights(xw, plan, scale)
    counts = [len(w) for w in grouped[:len(plan.groups)]]  # (the compensated form's full distances: last)
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
    form = PRECISION.masked.form(x.dtype, sigma, B)
    chunk_size = _chunk_size(plan, B, len(train), chunk_size, form.dtype.itemsize)
    total = merge_all(_chunk_group_states(x, sigma, train, plan, chunk_size, centre, form), exp=torch.exp2)
    if total is None:
        return empty_state((B, d), (B, d), dtype=x.dtype, m_dtype=form.dtype, device=x.device)
    m, s, acc = (_output_order(plan, t) for t in total)
    return SoftmaxState(m * math.log(2.0), s, acc)          # m back to natural-log units


def masked_softmax_denoise(x: torch.Tensor, sigma: float, train: torch.Tensor, plan: MaskPlan, *,
                           chunk_size: int | None = None, batch_normalised: bool = False,
                           centre: torch.Tensor | None = None, shard_merge: ShardMerge | None = None
                           ) -> torch.Tensor:
    """x0_hat (B, d) of the per-coordinate softmax denoiser with mask ``plan`` at one ``sigma``.

    x (B, d); train (N, d), streamed in chunks of ``chunk_size`` images (default: a cache-sized budget), or,
    ``batch_normalised``, in the public code's batches of REFERENCE_BATCH. Either is split over torch threads
    (`softmax.threaded_map`; the batches whole, so the result is the one-thread one). The terms and their
    precision follow `softmax.PRECISION.masked`.
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
    form = PRECISION.masked.form(x.dtype, sigma, len(x))

    def batch_results(part: slice) -> list[torch.Tensor]:                # (B, d) per batch of the training set
        states = _chunk_group_states(x, sigma, train[part], plan, REFERENCE_BATCH, centre, form)
        return [_output_order(plan, acc / s) for _, s, acc in states]

    shards = threaded_map(batch_results, len(train), inputs=(x, train, centre), align=REFERENCE_BATCH)
    return torch.stack([r for results in shards for r in results]).mean(0).to(x.dtype)
