"""The IDX format of (Fashion-)MNIST: reading, writing (for tests), finding and downloading the files."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

from locality_core import settings
from locality_core.data.base import DatasetError
from locality_core.data.download import download

_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09}

SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}

# Canonical sources and the md5 of their .gz files, as published by the data sets' authors.
SOURCES = {
    "fashion-mnist": {
        "url": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        "md5": {
            "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12e480ee83cd310",
        },
        "system_dirs": ["/usr/share/datasets/fashion-mnist"],
    },
    "mnist": {
        "url": "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "md5": {
            "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
        },
        "system_dirs": ["/usr/share/datasets/mnist"],
    },
}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped). Raises DatasetError on a truncated or malformed file."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as exc:  # gzip raises EOFError on a truncated stream
        raise DatasetError(f"{path} is unreadable ({exc}); delete it and download it again.") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _DTYPES:
        raise DatasetError(f"{path} is not an IDX file (bad magic number); delete it and download it again.")
    dtype = np.dtype(_DTYPES[raw[2]])
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetError(f"{path} is truncated (header incomplete); delete it and download it again.")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DatasetError(f"{path} is truncated or padded: {len(raw) - header} data bytes for shape {shape}, "
                           f"expected {expected}; delete it and download it again.")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def write_idx(path: str | Path, array: np.ndarray) -> Path:
    """Write a uint8/int8 array as IDX (gzipped when the name ends in .gz). Used by the tests."""
    path = Path(path)
    array = np.ascontiguousarray(array)
    header = bytes([0, 0, _CODES[array.dtype], array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as f:
        f.write(header + array.tobytes())
    return path


def candidate_dirs(name: str) -> list[Path]:
    """Where to look for a data set's IDX files, in order: $LOCALITY_DATA_DIR/<name>, the Debian package."""
    dirs = []
    if settings.DATA_DIR.is_set():
        dirs.append(settings.DATA_DIR.path() / name)
    dirs += [Path(p) for p in SOURCES[name]["system_dirs"]]
    return dirs


def find_idx_dir(name: str) -> Path | None:
    for d in candidate_dirs(name):
        if all((d / f).exists() for files in SPLIT_FILES.values() for f in files):
            return d
    return None


def download_idx(name: str, dest_dir: Path, *, base_url: str | None = None, progress: bool = True) -> Path:
    """Download the four IDX files of ``name`` into ``dest_dir``, verifying each md5."""
    source = SOURCES[name]
    base = base_url or source["url"]
    for files in SPLIT_FILES.values():
        for fname in files:
            download(base + fname, dest_dir / fname, source["md5"][fname], progress=progress)
    return dest_dir


def load_idx_split(directory: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    images_file, labels_file = SPLIT_FILES[split]
    images = read_idx(directory / images_file)
    labels = read_idx(directory / labels_file)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DatasetError(f"{directory}: {split} images {images.shape} and labels {labels.shape} do not match.")
    return images, labels
