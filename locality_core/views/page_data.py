"""The arrays the pages draw that are quick to compute (no job): the ELS patch around a pixel, the numbers of the
Sensitivity table. The long ones are view functions (`views.catalogue`)."""

from __future__ import annotations

import numpy as np

from locality_core.data import Dataset
from locality_core.denoisers.patches import resolve_schedule, square_mask
from locality_core.denoisers.wiener import passing_components
from locality_core.stats.covariance import DataStats


def els_square(shape: tuple[int, int, int], pixel: tuple[int, int], size: int) -> np.ndarray:
    """(H, W) 0/1: the pixel's column of the ELS machine's `patches.square_mask` (its P x P patch, clipped at the
    border). The square is separable: rows near the pixel's row times columns near its column, each the column of
    a one-pixel-wide image's mask, so no (d, d) mask is built per click."""
    _, h, w = shape
    rows = square_mask((1, h, 1), size)[:, pixel[0]]
    cols = square_mask((1, 1, w), size)[:, pixel[1]]
    return np.outer(rows, cols).astype(float)


def els_patches(data: Dataset, pixel: tuple[int, int], sigmas) -> tuple[np.ndarray, list[int], str]:
    """The ELS patch around the pixel at each sigma, P from the machine's schedule: (S, H, W) maps, the sizes, and
    where the schedule comes from."""
    schedule = resolve_schedule(data, "els")
    sizes = [schedule.size_for(s) for s in sigmas]
    return np.stack([els_square(data.shape, pixel, p) for p in sizes]), sizes, schedule.source


def sensitivity_table(stats: DataStats, sigmas, sizes: dict[str, np.ndarray], cosines=None, masks=None,
                      patch_sizes=None, extents: dict[str, np.ndarray] | None = None) -> dict[str, list]:
    """The Sensitivity table's rows (one value per noise level): components passing, half-max squares of each
    field (``extents``: `fields.half_max_sizes` per denoiser, what the sentences use) and 50 % squares
    (``sizes``: `fields.locality_sizes`), the UNet-Wiener cosine, mask sizes, ELS patch sizes."""
    table = {"components with λ > σ²": [passing_components(stats.eigvals, s) for s in sigmas]}
    for name, title in (("wiener", "Wiener"), ("unet", "UNet")):
        if extents is not None and name in extents:
            table[f"{title} half-max square (px)"] = list(extents[name])
    table["Wiener 50 % square (px)"] = list(sizes["wiener"][:, 0])
    if "unet" in sizes:
        table["UNet 50 % square (px)"] = list(sizes["unet"][:, 0])
        table["cos(UNet, Wiener)"] = [f"{c:.2f}" for c in cosines]
    if masks is not None:
        table["analytical mask: inputs"] = masks[1]
        table["analytical mask: max |M|"] = [f"{m:.3g}" for m in masks[2]]
    if patch_sizes is not None:
        table["ELS patch size P"] = patch_sizes
    return table
