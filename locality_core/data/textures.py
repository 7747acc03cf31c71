"""Stationary textures: 28x28 grayscale patches of scikit-image's brick, grass and gravel photographs
(copies ship in locality_core/assets/data).

Each photo is 512x512. Training patches come from its top three quarters (rows 0..383), test patches from
its bottom quarter (rows 384..511), so no test pixel was ever seen in training. Patches lie on a lattice of
step ``stride``; labels are the texture index (``class_names``).
"""

from __future__ import annotations

import numpy as np
import torch

from locality_core.data.base import Dataset, fingerprint, to_signed_unit
from locality_core.data.bundled import bundled_available, bundled_file, cut, grid, read_image

SIZE = 28
TEXTURES = ("brick", "grass", "gravel")
TEST_ROWS = 128  # the bottom quarter of each 512x512 photo


def availability() -> tuple[bool, str]:
    return bundled_available(*(f"{t}.png" for t in TEXTURES))


def region_patches(image: np.ndarray, stride: int) -> np.ndarray:
    """uint8 (H, W) -> patches (K, 1, 28, 28) on a lattice of step ``stride``."""
    return cut(image, grid(image.shape[0], image.shape[1], SIZE, stride), SIZE)


def texture_counts(stride: int = 6, height: int = 512, width: int = 512) -> tuple[int, int]:
    """(n_train, n_test) without reading any pixel."""
    per = [len(grid(h, width, SIZE, stride)) for h in (height - TEST_ROWS, TEST_ROWS)]
    return per[0] * len(TEXTURES), per[1] * len(TEXTURES)


def peak_bytes(stride: int = 6) -> int:
    """Upper bound on the memory `load_textures` takes: per pixel of the patches, the uint8 patches, their
    concatenation and the float32 copy (6 bytes, 3 % above: 3,001 MiB measured at stride 1), plus the photos'
    decoding and a margin."""
    return int(6.2 * sum(texture_counts(max(1, int(stride)))) * SIZE * SIZE) + 32 * 2**20


def load_textures(stride: int = 6) -> Dataset:
    """About 14,600 train and 4,100 test patches (stride 6), (1, 28, 28) in [-1, 1], labels = texture."""
    train, test, y_train, y_test = [], [], [], []
    for label, name in enumerate(TEXTURES):
        image = read_image(bundled_file(f"{name}.png"), "L")
        split = image.shape[0] - TEST_ROWS
        train.append(region_patches(image[:split], stride))
        test.append(region_patches(image[split:], stride))
        y_train.append(np.full(len(train[-1]), label, dtype=np.int64))
        y_test.append(np.full(len(test[-1]), label, dtype=np.int64))
    x_train, x_test = np.concatenate(train), np.concatenate(test)
    return Dataset(
        name="textures", train=to_signed_unit(x_train), test=to_signed_unit(x_test),
        fingerprint=fingerprint(x_train, x_test, recipe=f"textures:v1:{TEXTURES}:size={SIZE}:stride={stride}:"
                                                        f"test=bottom-{TEST_ROWS}-rows:uint8/255*2-1"),
        description=(f"Textures (brick, grass, gravel): {len(x_train):,} training patches from the top three "
                     f"quarters of each photo, {len(x_test):,} test patches from the bottom quarter; 28x28"),
        train_labels=torch.from_numpy(np.concatenate(y_train)), test_labels=torch.from_numpy(np.concatenate(y_test)),
        class_names=TEXTURES, params={"stride": stride},
    )
