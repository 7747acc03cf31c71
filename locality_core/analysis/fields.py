"""Sensitivity fields of any denoiser, and how local they are.

Glossary
    field         S_m(sigma) = mean_j |dD(x_j, sigma)_m / dx|: which input pixels output pixel m listens to,
                  averaged over noisy held-out images x_j = x0_j + sigma * eps_j (the signed mean too)
    Field         result container: ``abs_mean`` and ``signed_mean`` of shape (S, C_out, C_in, H, W), one
                  entry per sigma, output channel of the pixel, and input channel
    map           an (S, H, W) view: channels summed (absolute values for "abs", raw for "signed")
    window share  share of a map's absolute mass inside the centred k x k square (clipped at the border)
    locality size smallest odd k whose square holds 50 / 75 / 95 % of the mass (the curve and table)
    half-max square   smallest odd k whose centred square holds every pixel where the absolute map reaches half
                  its maximum: the size the page's sentences use. A colour scale that spans a map's maximum
                  shows this extent; a faint floor spread over the whole image (invisible on that scale) can hold
                  half the mass and make the 50 % square wide, but it cannot reach half the maximum

One backward pass per output channel gives the Jacobian rows of all n inputs at all sigmas at once:
the inputs are stacked along the batch, and the denoisers never mix batch elements.

Precision: float32 by default. ``precision="bfloat16"`` runs the network's convolutions and matmuls under
bfloat16 autocast (gradients still come back in float32). On CPUs with native bfloat16 (AVX512-BF16 or AMX,
see `native_bfloat16`) that is 3-5x faster, and the maps agree with float32 to cosine >= 0.999 (tested; 0.9999
measured); the dashboard uses it there. Elsewhere bfloat16 is emulated and slower.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from locality_core.denoisers.base import LinearDenoiser
from locality_core.denoisers.evaluate import noisy_heldout
from locality_core.denoisers.registry import denoiser_cache_id, get_denoiser, get_spec
from locality_core.denoisers.wiener import WienerDenoiser
from locality_core.stats.covariance import DataStats
from locality_core.store.cache import cache_kind, default_cache

LOCALITY_LEVELS = (0.50, 0.75, 0.95)
PRECISIONS = ("float32", "bfloat16")


def native_bfloat16(device: str = "cpu") -> bool:
    """Whether bfloat16 matmuls and convolutions run natively (fast) on ``device``."""
    if device.startswith("cuda"):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(probe is not None and probe() for probe in probes)


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return precision


def _precision_context(precision: str, device: torch.device):
    if check_precision(precision) == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


@dataclass(frozen=True, eq=False)
class Field:
    """Sensitivity of output pixel ``pixel`` = (row, col) at each of ``sigmas``."""

    pixel: tuple[int, int]
    sigmas: tuple[float, ...]
    abs_mean: np.ndarray     # (S, C_out, C_in, H, W)
    signed_mean: np.ndarray  # (S, C_out, C_in, H, W)

    def map(self, mode: str = "abs", out_channel: int | None = None, in_channel: int | None = None) -> np.ndarray:
        """(S, H, W) map: channels summed, or one output / input channel when given."""
        if mode not in ("abs", "signed"):
            raise ValueError(f"mode must be 'abs' or 'signed', got {mode!r}")
        a = self.abs_mean if mode == "abs" else self.signed_mean
        if out_channel is not None:
            a = a[:, out_channel:out_channel + 1]
        if in_channel is not None:
            a = a[:, :, in_channel:in_channel + 1]
        return a.sum(axis=(1, 2))


def check_pixel(pixel: tuple[int, int], shape: tuple[int, int, int]) -> tuple[int, int]:
    r, c = int(pixel[0]), int(pixel[1])
    _, h, w = shape
    if not (0 <= r < h and 0 <= c < w):
        raise ValueError(f"pixel ({r}, {c}) is outside the {h}x{w} image")
    return r, c


def wiener_field(stats: DataStats, pixel: tuple[int, int], sigmas: list[float]) -> Field:
    """Closed-form field of the Wiener denoiser: rows of P_sigma, exact (float64)."""
    return linear_field(WienerDenoiser.from_stats(stats), pixel, sigmas)


def linear_field(denoiser: LinearDenoiser, pixel: tuple[int, int], sigmas: list[float]) -> Field:
    """Closed-form field of any linear denoiser: rows of its Jacobian, float64."""
    c, h, w = denoiser.shape
    r, col = check_pixel(pixel, denoiser.shape)
    indices = [ch * h * w + r * w + col for ch in range(c)]
    rows = denoiser.jacobian_rows(indices, list(sigmas)).reshape(len(sigmas), c, c, h, w)
    return Field((r, col), tuple(float(s) for s in sigmas), np.abs(rows), rows)


def noisy_inputs(x0: torch.Tensor, sigmas: list[float], generator: torch.Generator | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """x0 (n, C, H, W) -> x (S*n, C, H, W) = x0 + sigma * eps (`evaluate.noisy_heldout`, flattened), and the
    matching (S*n,) sigmas."""
    x = noisy_heldout(x0, sigmas, generator=generator)
    return x.flatten(0, 1), torch.tensor(sigmas, dtype=x0.dtype).repeat_interleave(len(x0))


def jacobian_rows(denoiser, x: torch.Tensor, sigma: torch.Tensor, pixel: tuple[int, int],
                  batch_size: int = 512, precision: str = "float32") -> torch.Tensor:
    """Rows of dD(x_b, sigma_b)/dx_b for the output pixel's channels: (B, C_out, C_in, H, W), float32.

    ``denoiser`` must keep batch elements independent (no BatchNorm in training mode).
    """
    r, c = check_pixel(pixel, tuple(x.shape[1:]))
    out_rows = []
    for start in range(0, len(x), batch_size):
        xb = x[start:start + batch_size].detach().clone().requires_grad_(True)
        with torch.enable_grad(), _precision_context(precision, xb.device):
            out = denoiser(xb, sigma[start:start + batch_size].to(xb.device))
            channels = out.shape[1]
            grads = [torch.autograd.grad(out[:, ch, r, c].sum(), xb, retain_graph=ch < channels - 1)[0]
                     for ch in range(channels)]
        out_rows.append(torch.stack(grads, dim=1).detach().float())
    return torch.cat(out_rows)


def autograd_field(denoiser, x0: torch.Tensor, pixel: tuple[int, int], sigmas: list[float], *,
                   generator: torch.Generator | None = None, batch_size: int = 512,
                   precision: str = "float32") -> Field:
    """Field of any differentiable denoiser from n held-out images ``x0`` (n, C, H, W)."""
    x, sig = noisy_inputs(x0, list(sigmas), generator)
    rows = jacobian_rows(denoiser, x, sig, pixel, batch_size, precision)
    rows = rows.reshape(len(sigmas), len(x0), *rows.shape[1:]).double()
    return Field(check_pixel(pixel, tuple(x0.shape[1:])), tuple(float(s) for s in sigmas),
                 rows.abs().mean(1).numpy(), rows.mean(1).numpy())


def window_shares(field_map: np.ndarray, pixel: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Odd window sizes k = 1, 3, ... (up to covering the image from this pixel) and the share of the map's
    absolute mass inside each centred k x k square."""
    m = np.abs(np.asarray(field_map, dtype=np.float64))
    h, w = m.shape
    r, c = pixel
    total = m.sum()
    reach = max(r, h - 1 - r, c, w - 1 - c)
    ks = np.arange(0, reach + 1) * 2 + 1
    shares = np.array([m[max(0, r - k // 2):r + k // 2 + 1, max(0, c - k // 2):c + k // 2 + 1].sum() for k in ks])
    return ks, (shares / total if total > 0 else np.ones_like(shares))


def inside_side(k: int, pixel: tuple[int, int], shape: tuple[int, int]) -> float:
    """Side of the square with as many pixels as the part of the centred k x k square inside an image of
    ``shape`` (H, W): k itself away from the border, less near it, the image's side when it covers the image.
    It grows with k until the square covers the image, so wider fields keep larger sizes near the border too."""
    (h, w), (r, c), half = shape, pixel, k // 2
    rows = min(r + half, h - 1) - max(0, r - half) + 1
    cols = min(c + half, w - 1) - max(0, c - half) + 1
    side = float(np.sqrt(rows * cols))
    return int(side) if side.is_integer() else round(side, 1)


def locality_size(field_map: np.ndarray, pixel: tuple[int, int], level: float, interpolate: bool = False
                  ) -> int | float:
    """Size of the smallest centred odd k x k square holding ``level`` of the map's absolute mass, counted inside
    the image (`inside_side`): from a corner pixel the square must reach across the image, but only the image's
    pixels count, so a size never exceeds the image and still tells a wider field from a narrower one.

    ``interpolate``: a continuous size instead, linear in the share between consecutive odd k (1 when the pixel
    alone holds ``level``); it separates fields that the integer size ties.
    """
    ks, shares = window_shares(field_map, pixel)
    shape = np.shape(field_map)
    i = int(np.searchsorted(shares, level - 1e-12))
    if not interpolate or i == 0:
        return inside_side(int(ks[i]), pixel, shape)
    lo, hi = shares[i - 1], shares[i]
    a, b = inside_side(int(ks[i - 1]), pixel, shape), inside_side(int(ks[i]), pixel, shape)
    return float(a + (b - a) * (level - lo) / (hi - lo))


HALF = 0.5


def half_max_size(field_map: np.ndarray, pixel: tuple[int, int]) -> int | float:
    """Side of the smallest centred odd square (counted inside the image, `inside_side`) holding every pixel
    whose absolute value is at least half the map's maximum (1 for a zero map)."""
    m = np.abs(np.asarray(field_map, dtype=np.float64))
    top = m.max() if m.size else 0.0
    if top <= 0:
        return inside_side(1, pixel, m.shape)
    rows, cols = np.nonzero(m >= HALF * top)
    reach = int(max(np.abs(rows - pixel[0]).max(), np.abs(cols - pixel[1]).max()))
    return inside_side(2 * reach + 1, pixel, m.shape)


def half_max_sizes(field: Field) -> np.ndarray:
    """(S,) half-max squares of a field's absolute maps, one per sigma (the sizes the sentences use)."""
    return np.array([half_max_size(m, field.pixel) for m in field.map("abs")])


def locality_sizes(field: Field, levels=LOCALITY_LEVELS) -> np.ndarray:
    """(S, len(levels)) locality sizes of a field's absolute maps, one row per sigma."""
    maps = field.map("abs")
    return np.array([[locality_size(m, field.pixel, q) for q in levels] for m in maps])


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two maps (flattened)."""
    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    denom = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / denom) if denom > 0 else 0.0


FIELDS = cache_kind("field")


def field_key(dataset, name: str, pixel: tuple[int, int], sigmas: list[float], n: int, seed: int,
               precision: str, options: dict) -> str:
    check_precision(precision)
    return FIELDS.key(dataset.fingerprint, denoiser_cache_id(name, dataset, **options),
                          f"{pixel[0]},{pixel[1]}", ",".join(f"{s:.6g}" for s in sigmas), n, seed,
                          *(() if precision == "float32" else (precision,)))


def denoiser_field(dataset, name: str, pixel: tuple[int, int], sigmas: list[float], *, n: int = 32, seed: int = 0,
                   precision: str = "float32", cache=None, on_miss: Callable[[], None] | None = None,
                   **options) -> Field:
    """Field of registered denoiser ``name`` on ``dataset``, cached on disk.

    Linear ones (Wiener): closed form (exact, instant). Others: autograd over the first ``n`` test images with
    noise from ``seed``, cached by (data fingerprint, denoiser id incl. weights hash, pixel, sigmas, n, seed,
    precision). ``on_miss()`` runs when the field is not cached, before it is computed (or waited for).
    """
    pixel = check_pixel(pixel, dataset.shape)
    sigmas = [float(s) for s in sigmas]
    if get_spec(name).linear and not options:
        return linear_field(get_denoiser(name, dataset), pixel, sigmas)
    cache = cache or default_cache()
    key = field_key(dataset, name, pixel, sigmas, n, seed, precision, options)

    def compute():
        denoiser = get_denoiser(name, dataset, **options)
        f = autograd_field(denoiser, dataset.test[:n], pixel, sigmas, generator=torch.Generator().manual_seed(seed),
                           precision=precision)
        return {"abs_mean": f.abs_mean, "signed_mean": f.signed_mean}

    a = cache.get_or_compute(key, compute, on_miss=on_miss)
    return Field(pixel, tuple(sigmas), a["abs_mean"], a["signed_mean"])


def field_is_cached(dataset, name: str, pixel: tuple[int, int], sigmas: list[float], *, n: int = 32, seed: int = 0,
                    precision: str = "float32", cache=None, **options) -> bool:
    """Whether `denoiser_field` with these arguments would come from the disk cache (linear ones: always)."""
    if get_spec(name).linear and not options:
        return True
    cache = cache or default_cache()
    pixel = check_pixel(pixel, dataset.shape)
    return field_key(dataset, name, pixel, [float(s) for s in sigmas], n, seed, precision, options) in cache
