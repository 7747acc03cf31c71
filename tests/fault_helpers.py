"""Small helpers shared by the fault tests: folders of random images and a tiny imported data set."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def write_images(folder: Path, n: int, side: int, mode: str = "L", seed: int = 0) -> Path:
    """``n`` random ``side`` x ``side`` PNGs (grayscale "L" or "RGB") in a new ``folder``."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    shape = (side, side, 3) if mode == "RGB" else (side, side)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def import_tiny(home: Path, side: int = 8) -> None:
    """The data set ``user:tiny`` (12 grayscale images) in the data folder ``home`` ($LOCALITY_DATA_DIR)."""
    from locality_core.data import user

    user.import_images(write_images(home / "src", 12, side), "tiny")
