"""Natural-image patches: 32x32 RGB crops of 30 colour photographs available offline.

Nearly stationary statistics (power spectrum close to 1/f^2), the case where principal components are close
to Fourier modes and denoising fields are compact blobs (METHODS.md section 8).

The photographs: the 8 colour sample photos of scikit-image (copies ship in locality_core/assets/data), 12
nature photos of Debian's ``mate-backgrounds`` and 10 photographs among KDE's ``plasma-workspace-wallpapers``
(the drawn and abstract wallpapers are left out). Six photographs gave a network that learnt those pictures,
not natural images (it beat Wiener by 20-34 % on them and not at all on new ones); these 30 give it the variety
to generalise.

Recipe, deterministic given the parameters:
1. every photograph is first box-reduced by the integer factor that brings its shorter side near 512 px, so
   that a 2560x1600 wallpaper and a 512x512 test image have a similar level of detail per pixel;
2. it is then read at scales 1, 2 and 4 (area averaging: a box filter over 2x2 / 4x4 pixels);
3. at every scale, 32x32 windows on a lattice of step ``stride``;
4. nearly flat windows are dropped (std over the window < ``min_std``, pixels in [0, 1]): the black border
   of the retina photo, empty skies and out-of-focus backgrounds would otherwise be many copies of a few
   smooth images;
5. a photo giving more than ``max_per_photo`` windows keeps a seeded random subset of them, so that every
   photograph counts about equally.
Whole photographs are held out for the test split (the cat, the coffee cup, the ladybird and the boats at
sunset): no test patch overlaps a training photo. The labels say which photo a patch comes from
(``class_names`` are the photo names).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from locality_core.data.base import Dataset, DatasetError, fingerprint, to_signed_unit
from locality_core.data.bundled import bundled_file, cut, grid, window_std

SIZE = 32
BASE_SIDE = 512  # step 1: shorter side brought near this many pixels before the scales
SKIMAGE = "scikit-image"  # scikit-image's sample photos, vendored (the label is part of the fingerprint)
MATE = "mate-backgrounds"
PLASMA = "plasma-workspace-wallpapers"
_MATE_DIR = "/usr/share/backgrounds/mate/nature"


def _plasma(name: str) -> tuple[str, str]:
    return PLASMA, f"/usr/share/wallpapers/{name}/contents/images/2560x1600.jpg"


# name -> (where it comes from, file): a file in assets/data, or the path a Debian package installs
TRAIN_PHOTOS: dict[str, tuple[str, str]] = {
    "astronaut": (SKIMAGE, "astronaut.png"), "hubble_deep_field": (SKIMAGE, "hubble_deep_field.jpg"),
    "immunohistochemistry": (SKIMAGE, "ihc.png"), "motorcycle_left": (SKIMAGE, "motorcycle_left.png"),
    "retina": (SKIMAGE, "retina.jpg"), "rocket": (SKIMAGE, "rocket.jpg"),
    **{name.lower(): (MATE, f"{_MATE_DIR}/{name}.jpg") for name in (
        "Aqua", "Blinds", "Dune", "FreshFlower", "Garden", "GreenMeadow", "RainDrops", "Storm", "TwoWings",
        "Wood", "YellowFlower")},
    **{name.lower(): _plasma(name) for name in (
        "BytheWater", "ColdRipple", "ColorfulCups", "DarkestHour", "FallenLeaf", "Grey", "OneStandsOut", "Path",
        "summer_1am")},
}
TEST_PHOTOS: dict[str, tuple[str, str]] = {
    "chelsea": (SKIMAGE, "chelsea.png"), "coffee": (SKIMAGE, "coffee.png"),
    "ladybird": (MATE, f"{_MATE_DIR}/LadyBird.jpg"), "eveningglow": _plasma("EveningGlow"),
}
PHOTOS = tuple(TRAIN_PHOTOS) + tuple(TEST_PHOTOS)
DEFAULTS = {"stride": 6, "scales": (1, 2, 4), "min_std": 0.02, "max_per_photo": 2000, "max_per_test_photo": 1500,
            "seed": 0}


def photo_path(source: str, file: str) -> Path:
    """Where one photograph is on this machine; DatasetError saying what to install when it is not."""
    if source == SKIMAGE:
        return bundled_file(file)
    path = Path(file)
    if not path.is_file():
        raise DatasetError(f"{path} is missing: natural-patches needs the Debian packages {MATE} and {PLASMA} "
                           f"(`sudo apt-get install {MATE} {PLASMA}`, or run `make setup` as root).")
    return path


def availability() -> tuple[bool, str]:
    try:
        for source, file in (*TRAIN_PHOTOS.values(), *TEST_PHOTOS.values()):
            photo_path(source, file)
    except DatasetError as exc:
        return False, str(exc)
    return True, f"30 photographs: scikit-image's samples (shipped) and the Debian packages {MATE}, {PLASMA}"


def base_reduction(height: int, width: int) -> int:
    """Integer box-reduction factor of step 1: the shorter side ends between 512 and 1023 px (or stays)."""
    return max(1, min(height, width) // BASE_SIDE)


def photo_patches(path: Path, *, stride: int, scales: tuple[int, ...], min_std: float, limit: int,
                  rng: np.random.Generator) -> np.ndarray:
    """One photo -> uint8 patches (K, 3, 32, 32), K <= limit, in (scale, row, col) order."""
    with Image.open(path) as img:
        photo = img.convert("RGB")
    base = base_reduction(photo.height, photo.width)
    images, picks = [], []
    for scale in scales:
        reduce = base * scale
        image = np.asarray(photo.reduce(reduce) if reduce > 1 else photo)
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


def _split(photos: dict[str, tuple[str, str]], first_id: int, limit: int, seed: int,
           **kw) -> tuple[np.ndarray, np.ndarray]:
    parts, ids = [], []
    for i, (source, file) in enumerate(photos.values(), start=first_id):
        patches = photo_patches(photo_path(source, file), limit=limit, rng=np.random.default_rng([seed, i]), **kw)
        parts.append(patches)
        ids.append(np.full(len(patches), i, dtype=np.int64))
    return np.concatenate(parts), np.concatenate(ids)


PHOTO_BYTES = 256 * 2**20  # decoding, reducing and scanning the largest photograph (2560x1600 RGB): ~100 MB measured


def peak_bytes(max_per_photo: int = 2000, max_per_test_photo: int = 1500, **_) -> int:
    """Upper bound on the memory `load_natural_patches` takes: at most ``max_per_photo`` patches per training
    photo and ``max_per_test_photo`` per test photo, 6 bytes per patch pixel (uint8 patches, their concatenation,
    the float32 copy), plus one photograph's work."""
    n = len(TRAIN_PHOTOS) * int(max_per_photo) + len(TEST_PHOTOS) * int(max_per_test_photo)
    return 6 * n * 3 * SIZE * SIZE + PHOTO_BYTES


def load_natural_patches(stride: int = 6, scales: tuple[int, ...] = (1, 2, 4), min_std: float = 0.02,
                         max_per_photo: int = 2000, max_per_test_photo: int = 1500, seed: int = 0) -> Dataset:
    """Train: patches of 26 photos (about 52,000); test: 4 other photos (6,000). (3, 32, 32) in [-1, 1]."""
    if stride < 1 or not scales or any(int(s) < 1 for s in scales):
        raise DatasetError(f"natural-patches: stride must be >= 1 and scales positive integers, got {stride}, {scales}")
    scales = tuple(int(s) for s in scales)
    kw = {"stride": int(stride), "scales": scales, "min_std": float(min_std)}
    x_train, id_train = _split(TRAIN_PHOTOS, 0, max_per_photo, seed, **kw)
    x_test, id_test = _split(TEST_PHOTOS, len(TRAIN_PHOTOS), max_per_test_photo, seed, **kw)
    recipe = (f"natural-patches:v2:size={SIZE}:base-side={BASE_SIDE}:stride={stride}:scales={scales}:box-reduce:"
              f"min_std={min_std}:"
              f"max_per_photo={max_per_photo}:max_per_test_photo={max_per_test_photo}:seed={seed}:"
              f"train={list(TRAIN_PHOTOS.values())}:test={list(TEST_PHOTOS.values())}:uint8/255*2-1")
    return Dataset(
        name="natural-patches", train=to_signed_unit(x_train), test=to_signed_unit(x_test),
        fingerprint=fingerprint(x_train, x_test, recipe=recipe),
        description=(f"Natural-image patches: {len(x_train):,} training patches from {len(TRAIN_PHOTOS)} photos, "
                     f"{len(x_test):,} test patches from {len(TEST_PHOTOS)} held-out photos "
                     f"({', '.join(TEST_PHOTOS)}); 32x32 RGB at scales {scales}"),
        train_labels=torch.from_numpy(id_train), test_labels=torch.from_numpy(id_test), class_names=PHOTOS,
        params={**kw, "max_per_photo": max_per_photo, "max_per_test_photo": max_per_test_photo, "seed": seed},
    )
