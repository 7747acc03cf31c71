"""The patch machines of Kamb & Ganguli (2025): LS and ELS, and their patch-size schedules (calibration against
a network: `analysis.calibration`).

Glossary
    P           patch size (odd): the neighbourhood of pixel (r, c) is the P x P square around it, all channels,
                zero padding outside the image; h = P // 2
    LS          local score machine: per pixel, a softmax over all N training images of the squared distance
                between the patch of x and the training image's patch AT THE SAME PLACE; the output pixel is
                the weighted mean of the training images' pixel (weights shared by the pixel's channels).
                It is the analytical denoiser's formula with a square mask (`square_mask`), computed by
                separable box sums (`box_sum`) since squares need no general mask engine
    ELS         equivariant local score machine: candidates are every P x P patch of every training image at
                every position; the output pixel is the softmax-weighted mean of the candidates' centre pixels
    broken      boundary-broken ELS (their zero-padding variant, the default here): along each axis a
                coordinate within h of the border only matches candidates at the same coordinate (same zero
                padding), interior coordinates match every interior coordinate. A patch larger than the
                image leaves no interior: ELS then equals LS on its training subset
    n_train     ELS compares every patch with every patch: it uses a random subset of the training set
                (default 2,000 images, seed 0) to stay interactive. LS uses all N
    schedule    patch size per noise level. Kamb & Ganguli calibrated 20-step lists (low to high noise) for
                their Fashion-MNIST / MNIST / CIFAR-10 networks, sampled with a cosine schedule at
                t_i = i / 20, i.e. sigma_i = tan(pi/2 * t_i / 1.008). A sigma is mapped to the grid point
                nearest in u = atan(sigma) (their sampler's own time axis); sigmas above the grid take
                the last size
    calibrated  a schedule fitted to a reference denoiser (our UNet) by `analysis.calibration.calibrate`, saved
                beside its weights and read back here
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from locality_core.data import Dataset
from locality_core.denoisers.base import Denoiser, Shard, by_sigma
from locality_core.denoisers.models import find_weights, model_dirs, user_model_dir
from locality_core.denoisers.softmax import (
    PRECISION,
    ShardMerge,
    SoftmaxState,
    empty_state,
    exp_shifted,
    finish,
    merge_all,
    merge_states,
    threaded_state,
)
from locality_core.stats.covariance import mean_float64

KAMB_SCHEDULES: dict[str, tuple[int, ...]] = {
    "fashion-mnist": (3, 3, 5, 5, 7, 7, 7, 9, 11, 11, 11, 13, 15, 15, 21, 23, 25, 25, 25, 25),
    "mnist": (3, 3, 3, 5, 5, 7, 7, 7, 9, 9, 9, 11, 13, 15, 17, 21, 23, 23, 25, 27),
    "cifar10": (3, 3, 3, 3, 5, 5, 5, 5, 7, 7, 7, 7, 9, 9, 11, 13, 13, 15, 17, 25),
}
KAMB_STEPS = 20
ELS_TRAIN = 2000
SCHEDULE_FILE = "patch_schedule.json"
LOGIT_ELEMENTS = 1 << 22  # logits per streamed chunk of candidates
PATCH_ELEMENTS = 1 << 23  # unfolded training patches per chunk
BOX_ELEMENTS = 1 << 19    # LS: inputs x training images x pixels per chunk (2 MB of float32)
GRAD_SPAN = 4096          # LS under autograd: training images per checkpoint


# ---------------------------------------------------------------- schedules

def kamb_sigmas(steps: int = KAMB_STEPS) -> tuple[float, ...]:
    """Noise levels of Kamb & Ganguli's sampler steps i = 0 .. steps-1: tan(pi/2 * (i / steps) / 1.008)."""
    return tuple(math.tan(math.pi / 2 * (i / steps) / 1.008) for i in range(steps))


@dataclass(frozen=True)
class PatchSchedule:
    """Patch size per noise level; ``sigmas`` ascending, ``sizes`` odd."""

    sigmas: tuple[float, ...]
    sizes: tuple[int, ...]
    source: str = ""
    scores: tuple[tuple[float, ...], ...] = field(default=(), compare=False)  # calibration table, if any

    def __post_init__(self):
        if len(self.sigmas) != len(self.sizes) or not self.sizes:
            raise ValueError("a schedule needs one size per sigma")
        if any(p < 1 or p % 2 == 0 for p in self.sizes):
            raise ValueError(f"patch sizes must be odd and positive, got {self.sizes}")
        if list(self.sigmas) != sorted(self.sigmas):
            raise ValueError("schedule sigmas must be ascending")

    def size_for(self, sigma: float) -> int:
        """The size of the grid point nearest to ``sigma`` in u = atan(sigma)."""
        u = np.arctan(np.asarray(self.sigmas))
        return int(self.sizes[int(np.argmin(np.abs(u - math.atan(float(sigma)))))])

    def to_dict(self) -> dict:
        return {"sigmas": list(self.sigmas), "sizes": list(self.sizes), "source": self.source,
                "scores": [list(r) for r in self.scores]}

    @classmethod
    def from_dict(cls, d: dict) -> PatchSchedule:
        return cls(tuple(float(s) for s in d["sigmas"]), tuple(int(p) for p in d["sizes"]), d.get("source", ""),
                   tuple(tuple(float(v) for v in r) for r in d.get("scores", [])))


def kamb_schedule(name: str) -> PatchSchedule:
    """Kamb & Ganguli's calibrated list for ``name`` in KAMB_SCHEDULES, on their 20-step sigma grid."""
    if name not in KAMB_SCHEDULES:
        raise ValueError(f"no published schedule {name!r}; known: {', '.join(KAMB_SCHEDULES)}")
    return PatchSchedule(kamb_sigmas(), KAMB_SCHEDULES[name], f"Kamb & Ganguli, {name} UNet")


def published_schedule_for(dataset: Dataset) -> PatchSchedule:
    """The published list closest to this data set: Fashion-MNIST, MNIST, or CIFAR-10 for colour images."""
    name = dataset.name.lower()
    if "fashion" in name:
        return kamb_schedule("fashion-mnist")
    if "mnist" in name:
        return kamb_schedule("mnist")
    return kamb_schedule("cifar10" if dataset.channels == 3 else "fashion-mnist")


def schedule_path(dataset_name: str, *, for_writing: bool = False) -> Path | None:
    """Where a calibrated schedule lives: beside the UNet weights (or, to write, the user model folder when
    the weights' folder is not writable). None when reading and there is none."""
    if not for_writing:
        found = [d / SCHEDULE_FILE for d in model_dirs(dataset_name) if (d / SCHEDULE_FILE).is_file()]
        return found[0] if found else None
    weights = find_weights(dataset_name)
    folder = weights.parent if weights is not None else user_model_dir(dataset_name)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".write-test"
        probe.touch()
        probe.unlink()
    except OSError:
        folder = user_model_dir(dataset_name)
        folder.mkdir(parents=True, exist_ok=True)
    return folder / SCHEDULE_FILE


def load_calibrated(dataset: Dataset, kind: str) -> PatchSchedule | None:
    """The calibrated ``kind`` ("ls" or "els") schedule saved for this data set, if it matches its data."""
    path = schedule_path(dataset.name)
    if path is None:
        return None
    try:
        blob = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if blob.get("fingerprint") != dataset.fingerprint or kind not in blob:
        return None
    return PatchSchedule.from_dict(blob[kind])


def save_calibrated(dataset: Dataset, schedules: dict[str, PatchSchedule], path: Path | None = None,
                    **meta) -> Path:
    """Write {"fingerprint", kind: schedule, ...} as JSON (default: `schedule_path(..., for_writing=True)`)."""
    path = Path(path) if path else schedule_path(dataset.name, for_writing=True)
    blob = {"dataset": dataset.name, "fingerprint": dataset.fingerprint, **meta,
            **{k: s.to_dict() for k, s in schedules.items()}}
    path.write_text(json.dumps(blob, indent=1))
    return path


def resolve_schedule(dataset: Dataset, kind: str, schedule: str | PatchSchedule = "auto") -> PatchSchedule:
    """"auto": the calibrated one if saved, else the published one for the data set; "calibrated"; a name in
    KAMB_SCHEDULES; or a PatchSchedule."""
    if isinstance(schedule, PatchSchedule):
        return schedule
    if schedule in ("auto", "calibrated"):
        found = load_calibrated(dataset, kind)
        if found is not None:
            return found
        if schedule == "calibrated":
            raise ValueError(f"no calibrated {kind} schedule for {dataset.name!r}: run `locality calibrate "
                             f"{dataset.name}`")
        return published_schedule_for(dataset)
    return kamb_schedule(schedule)


# ---------------------------------------------------------------- LS

def square_mask(shape: tuple[int, int, int], patch: int) -> np.ndarray:
    """(d, d) bool: B[n, m] = pixel n within the P x P square around pixel m (all channel pairs)."""
    c, h, w = shape
    rows, cols = np.divmod(np.arange(h * w), w)
    near = (np.abs(rows[:, None] - rows[None]) <= patch // 2) & (np.abs(cols[:, None] - cols[None]) <= patch // 2)
    return np.tile(near, (c, c))


@functools.lru_cache(maxsize=64)
def _band(n: int, patch: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(n, n) 0/1: |i - j| <= patch // 2. Multiplying by it sums over a window of P, clipped at the ends.
    Built once per shape (box sums run per chunk of training images); read only."""
    i = torch.arange(n, device=device)
    return ((i[:, None] - i[None]).abs() <= patch // 2).to(dtype)


def box_sum(e: torch.Tensor, patch: int, weight: float = 1.0) -> torch.Tensor:
    """(..., H, W) -> (..., H, W): ``weight`` times the sum of ``e`` over the P x P square around each pixel,
    zero outside the image. Separable: a window sum along W, then along H, each a product with a band of ones:
    H + W multiply-adds per pixel in two dense GEMMs, whatever P (a sum over the square is P^2, and the
    general mask engine's GEMM over all pixels d)."""
    H, W = e.shape[-2:]
    rows = e.reshape(-1, W) @ _band(W, patch, e.dtype, e.device)
    return torch.matmul(weight * _band(H, patch, e.dtype, e.device), rows.view(-1, H, W)).view(e.shape)


def ls_denoise(x: torch.Tensor, sigma: float, train: torch.Tensor, patch: int, *,
               chunk_size: int | None = None, centre: torch.Tensor | None = None,
               shard_merge: ShardMerge | None = None) -> torch.Tensor:
    """LS machine at one ``sigma``: x (B, C, H, W), train (N, C, H, W) -> x0_hat (B, C, H, W).
    ``shard_merge``: ``train`` is one shard of the training set; this merges its state with the other shards'.
    The rest of the arguments as in `ls_state`.
    """
    B, C, H, W = x.shape
    if B == 0:
        return x.clone()
    state = ls_state(x, sigma, train, patch, chunk_size=chunk_size, centre=centre)
    if shard_merge is not None:
        state = shard_merge(state)
    return finish(state).transpose(1, 2).reshape(B, C, H, W).to(x.dtype)


def ls_state(x: torch.Tensor, sigma: float, train: torch.Tensor, patch: int, *,
             chunk_size: int | None = None, centre: torch.Tensor | None = None) -> SoftmaxState:
    """The LS softmax state over ``train`` (N, C, H, W; may be empty) for x (B, C, H, W): m, s (B, H*W) and
    acc (B, H*W, C), float64. States of disjoint shards merge exactly; `finish` gives x0_hat.

    Pixel m: softmax over the N training images of -||x patch - x0_k patch||^2 / (2 sigma^2), patches at m
    (P x P, all channels, zero outside); the output is the weighted mean of the x0_k[:, m]. The same formula as
    `MaskedSoftmaxDenoiser` with `square_mask`, computed as box sums of (x - x0_k)^2 (`box_sum`): d (H + W)
    multiply-adds per training image and input in dense GEMMs, instead of up to d^2 in the mask engine.
    Training images stream in chunks (`_ls_chunk_state`; exact streaming softmax, chunk states merged in
    float64). Under autograd spans of GRAD_SPAN images are checkpointed; without it, with several torch threads,
    the training set is split over threads of one torch thread each (`softmax.threaded_state`).

    Precision (`softmax.PRECISION.ls`): images are centred on ``centre`` (C, H, W) (the training mean is a good
    choice). At low noise the terms are (x - x0)^2, exact for near neighbours, which decide a low-noise softmax.
    At high noise, where noise makes every (x - x0)^2 large but the softmax only sees differences between
    training images, they are (x - x0)^2 - (x - centre)^2 = x0c (x0c - 2 xc), k-independent terms dropped: an
    order of magnitude smaller, so float32 round-off is too (`_ls_terms`).
    """
    if patch < 1 or patch % 2 == 0:
        raise ValueError(f"patch size must be odd and positive, got {patch}")
    B, C, H, W = x.shape
    if not len(train):
        return empty_state((B, H * W), (B, H * W, C), dtype=torch.float64, device=x.device)
    form = PRECISION.ls.form(x.dtype, sigma)
    centre, expanded = _ls_work_centre(x, form.dtype, centre), not form.direct
    xw = (x.to(centre.dtype) - centre) * (2.0 if expanded else 1.0)
    scale = -1.0 / (2.0 * sigma**2)
    per_chunk = chunk_size or max(8, BOX_ELEMENTS // (B * C * H * W))
    grad = torch.is_grad_enabled() and x.requires_grad

    def span_state(start: int, stop: int, xq: torch.Tensor) -> tuple[torch.Tensor, ...]:
        chunks = (_ls_chunk_state(train[first:min(stop, first + per_chunk)].to(device=x.device), xq, centre, patch,
                                  scale, x.dtype, expanded=expanded, grad=grad)
                  for first in range(start, stop, per_chunk))
        return tuple(merge_all(SoftmaxState(*(t.double() for t in st)) for st in chunks))  # float64: no round-off

    if not grad:
        return threaded_state(lambda part: SoftmaxState(*span_state(part.start, part.stop, xw)), len(train),
                              inputs=(x, train, centre))
    # under autograd a checkpoint spans many chunks, merging their states inside it: autograd then keeps one
    # state per span, not per chunk (the Jacobian of 256 inputs at N = 60,000 would keep 7,500 states)
    span = max(per_chunk, GRAD_SPAN)
    spans = (checkpoint(span_state, start, min(start + span, len(train)), xw, use_reentrant=False)
             for start in range(0, len(train), span))
    return merge_all(SoftmaxState(*flat) for flat in spans)


def _ls_work_centre(x: torch.Tensor, dtype: torch.dtype, centre: torch.Tensor | None) -> torch.Tensor:
    """The centre (C, H, W) in the work ``dtype`` on x's device; zeros when None."""
    C, H, W = x.shape[1:]
    if centre is None:
        return torch.zeros((C, H, W), dtype=dtype, device=x.device)
    return centre.to(x.device, dtype).view(C, H, W)


def _ls_terms(xq: torch.Tensor, x0c: torch.Tensor, *, expanded: bool, grad: bool) -> torch.Tensor:
    """(B, K, C, H, W) per-pixel terms whose box sums are the distances (up to k-independent terms) of queries
    xq (B, C, H, W) to centred training images x0c (K, C, H, W): (x0c - xc)^2 with xq = xc, or, ``expanded``,
    x0c (x0c - 2 xc) with xq = 2 xc. Computed in place unless under autograd (``grad``)."""
    terms = x0c[None] - xq[:, None]
    if expanded:
        return terms.mul_(x0c[None]) if not grad else terms * x0c[None]
    return terms.square_() if not grad else terms * terms


def _ls_chunk_state(x0: torch.Tensor, xq: torch.Tensor, centre: torch.Tensor, patch: int, scale: float,
                    out_dtype: torch.dtype, *, expanded: bool, grad: bool) -> tuple[torch.Tensor, ...]:
    """(m, s) (B, H*W) and acc (B, H*W, C): the LS softmax state of one chunk x0 (K, C, H, W) of training images
    for queries xq (B, C, H, W) (`_ls_terms`). Logits in the work dtype (``centre``'s), weights and sums in
    ``out_dtype`` (x's); float64 logits of float32 inputs are shifted by their max before the cast."""
    B, (K, C, H, W), dtype = len(xq), x0.shape, centre.dtype
    terms = _ls_terms(xq, x0.to(dtype) - centre, expanded=expanded, grad=grad)
    logits = box_sum(terms.sum(2) if C > 1 else terms.squeeze(2), patch, scale).view(B, K, H * W)
    m = logits.amax(dim=1)                                                             # (B, HW)
    if dtype != out_dtype:  # float64 logits: shift by the max in float64, exponentiate in float32
        logits = (logits - m[:, None]).to(out_dtype)
    p = exp_shifted(logits, m[:, None] if dtype == out_dtype else 0.0, inplace=not grad)
    values = x0.to(out_dtype).view(K, C, H * W)
    acc = (p[:, :, None] * values[None]).sum(1) if C > 1 else (p * values[:, 0]).sum(1)[:, None]
    return m, p.sum(1), acc.transpose(1, 2)                                            # acc (B, HW, C)


class LSDenoiser(Denoiser):
    """LS machine on all training images: ``LSDenoiser(schedule).fit(dataset)``, or a fixed ``patch_size``.
    Learned (buffers): train_ (N, C, H, W) the training images (no copy), mean_ (C, H, W) float64 their mean."""

    learned = ("train_", "mean_")

    def __init__(self, schedule: PatchSchedule | None = None, patch_size: int | None = None, *,
                 chunk_size: int | None = None):
        super().__init__()
        if schedule is None and patch_size is None:
            raise ValueError("give a schedule or a patch_size")
        self.schedule, self.patch_size, self.chunk_size = schedule, patch_size, chunk_size
        self.shard_merge: ShardMerge | None = None  # set by `fit_shard`

    def size_for(self, sigma: float) -> int:
        return int(self.patch_size) if self.patch_size is not None else self.schedule.size_for(sigma)

    def fit(self, dataset: Dataset) -> LSDenoiser:
        self.train_ = dataset.train
        self.mean_ = mean_float64(dataset.train)  # (C, H, W) centring: smaller terms, less round-off
        return self

    def fit_shard(self, shard: Shard) -> LSDenoiser:
        """`fit` to one process's shard of the training set, centred on the mean of all shards (every process
        drops the same constant from its logits); its softmax states merge with the other shards'."""
        self.fit(Dataset.from_tensor(shard.images))
        self.mean_ = shard.mean().reshape(self.mean_.shape)
        self.shard_merge = shard.merge
        return self

    def forward(self, x: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W), sigma scalar or (B,) -> x0_hat (B, C, H, W); inputs grouped by noise level."""
        self.check_fitted()
        return by_sigma(x, sigma, lambda xs, s: ls_denoise(xs, s, self.train_, self.size_for(s),
                                                             chunk_size=self.chunk_size, centre=self.mean_,
                                                             shard_merge=self.shard_merge))


# ---------------------------------------------------------------- ELS

def _axis_classes(length: int, half: int, broken: bool) -> list[np.ndarray]:
    """Coordinates that share candidates: each border coordinate alone, the interior together."""
    if not broken:
        return [np.arange(length)]
    lo, hi = half, length - 1 - half
    classes = [np.array([i]) for i in range(length) if i < lo or i > hi]
    if hi >= lo:
        classes.append(np.arange(lo, hi + 1))
    return sorted(classes, key=lambda a: a[0])


def position_groups(height: int, width: int, patch: int, broken: bool = True) -> list[torch.Tensor]:
    """Classes of positions (flattened r * W + c) whose pixels share one candidate set (their own positions),
    batched by size: a list of (G, Q) index tensors, G classes of Q positions each."""
    half = patch // 2
    groups: dict[tuple[int, int], list[np.ndarray]] = {}
    for rs in _axis_classes(height, half, broken):
        for cs in _axis_classes(width, half, broken):
            groups.setdefault((len(rs), len(cs)), []).append((rs[:, None] * width + cs[None]).ravel())
    return [torch.from_numpy(np.stack(g)) for g in groups.values()]


def _patches(images: torch.Tensor, patch: int) -> torch.Tensor:
    """(n, C, H, W) -> (n, C*P*P, H*W): the zero-padded patch around every pixel."""
    half = patch // 2
    return F.unfold(F.pad(images, (half, half, half, half)), patch)


def _group_state(queries: torch.Tensor, T: torch.Tensor, norms: torch.Tensor, centres: torch.Tensor, scale: float,
                 out_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Softmax state of queries (G, M, D) over the K candidates of their class: patches T (G, D, K), squared
    norms (G, 1, K), centre pixels (G, K, C)."""
    logits = torch.baddbmm(scale * norms, queries, T, alpha=-2.0 * scale)     # (G, M, K), one fused pass
    m = logits.amax(dim=2)
    shifted = logits.sub_(m[..., None]) if not logits.requires_grad else logits - m[..., None]
    p = exp_shifted(shifted.to(out_dtype), 0.0, inplace=not shifted.requires_grad)
    return m, p.sum(2), p @ centres.to(out_dtype)


def els_denoise(x: torch.Tensor, sigma: float, train: torch.Tensor, patch: int, *, broken: bool = True,
                images_per_chunk: int | None = None) -> torch.Tensor:
    """ELS machine at one ``sigma``: x (B, C, H, W), train (n, C, H, W) -> x0_hat (B, C, H, W).

    Every pixel: softmax over the candidate patches of its class (see `position_groups`) of
    -||x patch - candidate||^2 / (2 sigma^2); output = weighted mean of the candidates' centre pixels.
    Candidates stream in chunks of training images (exact streaming softmax).
    """
    if patch < 1 or patch % 2 == 0:
        raise ValueError(f"patch size must be odd and positive, got {patch}")
    B, C, H, W = x.shape
    dtype = PRECISION.els.form(x.dtype, sigma).dtype
    scale = -1.0 / (2.0 * sigma**2)
    groups = position_groups(H, W, patch, broken)
    q_all = _patches(x.to(dtype), patch)                                       # (B, D, HW)
    D = q_all.shape[1]
    queries = [q_all[:, :, g].permute(2, 0, 3, 1).reshape(len(g), -1, D) for g in groups]   # (G, B*Q, D)
    widest = max(g.shape[0] * B * g.shape[1] * g.shape[1] for g in groups)
    per_chunk = images_per_chunk or max(1, min(LOGIT_ELEMENTS // widest, PATCH_ELEMENTS // (D * H * W)))
    ones = torch.ones(1, C, patch, patch, dtype=dtype, device=x.device)

    def chunk_states(start: int, *qs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        imgs = train[start:start + per_chunk].to(device=x.device, dtype=dtype)
        n = len(imgs)
        t_all = _patches(imgs, patch).permute(2, 1, 0)                           # (HW, D, n) view
        t_norm = F.conv2d(imgs * imgs, ones, padding=patch // 2).view(n, H * W).T  # (HW, n) patch ||t||^2
        centre = imgs.reshape(n, C, H * W).permute(2, 0, 1)                      # (HW, n, C) view
        out = []
        for g, q in zip(groups, qs, strict=True):
            G, Q = g.shape
            flat = g.flatten()
            T = t_all.index_select(0, flat).view(G, Q, D, n).transpose(1, 2).reshape(G, D, Q * n)
            norms = t_norm.index_select(0, flat).view(G, 1, Q * n)
            out += _group_state(q, T, norms, centre.index_select(0, flat).view(G, Q * n, C), scale, x.dtype)
        return tuple(out)

    grad = torch.is_grad_enabled() and x.requires_grad
    total = None
    for start in range(0, len(train), per_chunk):
        flat = checkpoint(chunk_states, start, *queries, use_reentrant=False) if grad else chunk_states(start, *queries)
        states = [SoftmaxState(*flat[i:i + 3]) for i in range(0, len(flat), 3)]
        total = states if total is None else [merge_states(a, b) for a, b in zip(total, states, strict=True)]
    positions = torch.cat([g.flatten() for g in groups])
    values = torch.cat([finish(s).view(len(g), B, g.shape[1], C).permute(1, 3, 0, 2).reshape(B, C, -1)
                        for s, g in zip(total, groups, strict=True)], dim=2)             # (B, C, HW) in group order
    return values[:, :, torch.argsort(positions)].view(B, C, H, W)


class ELSDenoiser(Denoiser):
    """ELS machine on a random subset of ``n_train`` training images (None = all): ``.fit(dataset)``.
    Learned (buffer): train_ (n, C, H, W) the subset."""

    learned = ("train_",)

    def __init__(self, schedule: PatchSchedule | None = None, patch_size: int | None = None, *,
                 n_train: int | None = ELS_TRAIN, broken: bool = True, seed: int = 0):
        super().__init__()
        if schedule is None and patch_size is None:
            raise ValueError("give a schedule or a patch_size")
        self.schedule, self.patch_size = schedule, patch_size
        self.n_train, self.broken, self.seed = n_train, broken, seed

    def size_for(self, sigma: float) -> int:
        return int(self.patch_size) if self.patch_size is not None else self.schedule.size_for(sigma)

    def fit(self, dataset: Dataset) -> ELSDenoiser:
        train = dataset.train
        if self.n_train is not None and self.n_train < len(train):
            pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(self.seed))[:self.n_train]
            train = train[torch.sort(pick).values]
        self.train_ = train
        return self

    def fit_shard(self, shard: Shard) -> ELSDenoiser:
        raise TypeError("ELS cannot be sharded: it draws its subset of training images from all of them, and its "
                        "softmax over every patch of that subset runs in one process (els_denoise keeps no state "
                        "to merge across processes)")

    def forward(self, x: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W), sigma scalar or (B,) -> x0_hat (B, C, H, W)."""
        self.check_fitted()
        return by_sigma(x, sigma, lambda xs, s: els_denoise(xs, s, self.train_, self.size_for(s),
                                                             broken=self.broken))
