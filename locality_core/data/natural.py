"""Natural-image patches: 32x32 RGB crops of the colour photographs bundled with scikit-image.

Nearly stationary statistics (power spectrum close to 1/f^2), the case where principal components are close
to Fourier modes and denoising fields are compact blobs (METHODS.md section 8).

Recipe, deterministic given the parameters:
1. every photograph is read at scales 1, 2 and 4 (area averaging: a box filter over 2x2 / 4x4 pixels);
2. at every scale, 32x32 windows on a lattice of step ``stride``;
3. nearly flat windows are dropped (std over the window < ``min_std``, pixels in [0, 1]): the black border
   of the retina photo and the empty sky would otherwise be many copies of one constant image;
4. a photo giving more than ``max_per_photo`` windows keeps a seeded random subset of them, so the two
   large photos (retina, Hubble) do not dominate.
Whole photographs are held out for the test split (the cat and the coffee cup): no test patch overlaps a
training photo. The labels say which photo a patch comes from (``class_names`` are the photo names).
"""

from __future__ import annotations

import numpy as np
import torch

from .base import Dataset, DatasetError, fingerprint, to_signed_unit
from .bundled import cut, grid, read_image, skimage_available, skimage_file, window_std

SIZE = 32
TRAIN_PHOTOS = {"astronaut": "astronaut.png", "hubble_deep_field": "hubble_deep_field.jpg",
                "immunohistochemistry": "ihc.png", "motorcycle_left": "motorcycle_left.png",
                "retina": "retina.jpg", "rocket": "rocket.jpg"}
TEST_PHOTOS = {"chelsea": "chelsea.png", "coffee": "coffee.png"}
PHOTOS = tuple(TRAIN_PHOTOS) + tuple(TEST_PHOTOS)
DEFAULTS = {"stride": 6, "scales": (1, 2, 4), "min_std": 0.02, "max_per_photo": 12000, "max_per_test_photo": 3000,
            "seed": 0}


def availability() -> tuple[bool, str]:
    return skimage_available(*TRAIN_PHOTOS.values(), *TEST_PHOTOS.values())


def photo_patches(file: str, *, stride: int, scales: tuple[int, ...], min_std: float, limit: int,
                  rng: np.random.Generator) -> np.ndarray:
    """One photo -> uint8 patches (K, 3, 32, 32), K <= limit, in (scale, row, col) order."""
    images, picks = [], []
    for scale in scales:
        image = read_image(skimage_file(file), "RGB", reduce=scale)
        if min(image.shape[:2]) < SIZE:
            continue
        corners = grid(image.shape[0], image.shape[1], SIZE, stride)
        keep = window_std(image, SIZE)[corners[:, 0], corners[:, 1]] >= min_std
        images.append(image)
        picks.append(corners[keep])
    total = sum(len(p) for p in picks)
    chosen = np.sort(rng.permutation(total)[:limit]) if total > limit else np.arange(total)
    out, start = [], 0
    for image, corners in zip(images, picks, strict=True):
        local = chosen[(chosen >= start) & (chosen < start + len(corners))] - start
        out.append(cut(image, corners[local], SIZE))
        start += len(corners)
    return np.concatenate(out) if out else np.zeros((0, 3, SIZE, SIZE), np.uint8)


def _split(photos: dict[str, str], first_id: int, limit: int, seed: int, **kw) -> tuple[np.ndarray, np.ndarray]:
    parts, ids = [], []
    for i, file in enumerate(photos.values(), start=first_id):
        patches = photo_patches(file, limit=limit, rng=np.random.default_rng([seed, i]), **kw)
        parts.append(patches)
        ids.append(np.full(len(patches), i, dtype=np.int64))
    return np.concatenate(parts), np.concatenate(ids)


def load_natural_patches(stride: int = 6, scales: tuple[int, ...] = (1, 2, 4), min_std: float = 0.02,
                         max_per_photo: int = 12000, max_per_test_photo: int = 3000, seed: int = 0) -> Dataset:
    """Train: patches of six photos (about 60,000); test: two other photos (about 6,000). (3, 32, 32) in [-1, 1]."""
    if stride < 1 or not scales or any(int(s) < 1 for s in scales):
        raise DatasetError(f"natural-patches: stride must be >= 1 and scales positive integers, got {stride}, {scales}")
    scales = tuple(int(s) for s in scales)
    kw = {"stride": int(stride), "scales": scales, "min_std": float(min_std)}
    x_train, id_train = _split(TRAIN_PHOTOS, 0, max_per_photo, seed, **kw)
    x_test, id_test = _split(TEST_PHOTOS, len(TRAIN_PHOTOS), max_per_test_photo, seed, **kw)
    recipe = (f"natural-patches:v1:size={SIZE}:stride={stride}:scales={scales}:box-reduce:min_std={min_std}:"
              f"max_per_photo={max_per_photo}:max_per_test_photo={max_per_test_photo}:seed={seed}:"
              f"train={list(TRAIN_PHOTOS)}:test={list(TEST_PHOTOS)}:uint8/255*2-1")
    return Dataset(
        name="natural-patches", train=to_signed_unit(x_train), test=to_signed_unit(x_test),
        fingerprint=fingerprint(x_train, x_test, recipe=recipe),
        description=(f"Natural-image patches: {len(x_train):,} training patches from {len(TRAIN_PHOTOS)} photos, "
                     f"{len(x_test):,} test patches from {len(TEST_PHOTOS)} held-out photos "
                     f"({', '.join(TEST_PHOTOS)}); 32x32 RGB at scales {scales}"),
        train_labels=torch.from_numpy(id_train), test_labels=torch.from_numpy(id_test), class_names=PHOTOS,
        params={**kw, "max_per_photo": max_per_photo, "max_per_test_photo": max_per_test_photo, "seed": seed},
    )
