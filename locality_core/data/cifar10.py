"""CIFAR-10: the python-pickle batches, found on disk or downloaded once, unpickled without running code.

Glossary
    batch       one pickled dict of the original release: b"data" uint8 (10000, 3072) (R, G, B planes of
                32x32, row-major) and b"labels" (10000 ints in 0..9)
    archive     cifar-10-python.tar.gz (163 MB, md5 below); unpacks to ``cifar-10-batches-py/``
    SafeUnpickler  a pickle reader that only rebuilds numpy arrays, dicts, lists, strings and numbers: a file
                that names any other callable (``os.system``, ``subprocess.Popen``, ...) is refused
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import torch

from locality_core.data.base import Dataset, DatasetError, fingerprint, to_signed_unit
from locality_core.data.download import data_home, download, extract_tar, file_md5, offline

URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
MD5 = "c58f30108f718f92721af3b95e74349a"
ARCHIVE = "cifar-10-python.tar.gz"
FOLDER = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCHES = ("test_batch",)
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
MAX_UNPACKED_BYTES = 400 * 2**20  # the real archive unpacks to about 178 MB


def _allowed_globals() -> dict[tuple[str, str], object]:
    """The callables that numpy's own pickles of arrays name (protocols 2 to 5, numpy 1 and 2), and no other."""
    reconstruct = np.zeros(1).__reduce__()[0]
    scalar = np.float64(0).__reduce__()[0]
    frombuffer = np.zeros(1).__reduce_ex__(5)[0]
    allowed = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
               ("_codecs", "encode"): _latin1_encode}
    for prefix in ("numpy.core", "numpy._core"):
        allowed[(f"{prefix}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{prefix}.multiarray", "scalar")] = scalar
        allowed[(f"{prefix}.numeric", "_frombuffer")] = frombuffer
    return allowed


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """What protocol-2 pickles written by Python 3 use to store bytes (``_codecs.encode``), and nothing more."""
    if encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"unexpected encoding {encoding!r}")
    return text.encode("latin1")


class SafeUnpickler(pickle.Unpickler):
    """Rebuilds numpy arrays and plain containers; any other global in the file raises UnpicklingError."""

    _ALLOWED = _allowed_globals()

    def find_class(self, module: str, name: str):
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}") from None


def safe_unpickle(raw: bytes, what: str = "file"):
    """Unpickle ``raw`` (Python 2 pickles included: strings come back as bytes) with SafeUnpickler."""
    try:
        return SafeUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as exc:
        raise DatasetError(f"{what} is not a valid CIFAR-10 batch ({exc}); delete it and download it again.") from exc


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One batch file -> images uint8 (N, 3, 32, 32), labels int64 (N,)."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise DatasetError(f"cannot read {path} ({exc}).") from exc
    batch = safe_unpickle(raw, str(path))
    if not isinstance(batch, dict):
        raise DatasetError(f"{path} is not a CIFAR-10 batch (holds a {type(batch).__name__}, not a dict).")
    data, labels = batch.get(b"data", batch.get("data")), batch.get(b"labels", batch.get("labels"))
    data = np.asarray(data) if data is not None else None
    labels = np.asarray(labels, dtype=np.int64) if labels is not None else None
    if data is None or labels is None or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DatasetError(f"{path}: expected b'data' uint8 (N, 3072) and b'labels'; got "
                           f"{None if data is None else (data.dtype, data.shape)}.")
    if labels.shape != (len(data),) or labels.min(initial=0) < 0 or labels.max(initial=0) >= len(CLASSES):
        raise DatasetError(f"{path}: {len(data)} images but labels of shape {labels.shape} or outside 0..9.")
    return data.reshape(-1, 3, 32, 32), labels


def read_split(folder: Path, batches: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    parts = [read_batch(Path(folder) / b) for b in batches]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _complete(folder: Path) -> bool:
    return all((folder / b).is_file() for b in TRAIN_BATCHES + TEST_BATCHES)


def availability(root: Path | None = None) -> tuple[bool, str]:
    root = Path(root or data_home() / "cifar10")
    if _complete(root / FOLDER):
        return True, f"found in {root / FOLDER}"
    if (root / ARCHIVE).is_file():
        return True, f"archive found at {root / ARCHIVE}; unpacked on first use"
    return False, (f"not found in {root}; downloaded from {URL} (163 MB) on first use (needs internet), or put "
                   f"{ARCHIVE} (md5 {MD5}) or its unpacked {FOLDER}/ folder in {root}")


def fetch(root: Path | None = None, *, url: str | None = None, md5: str | None = None, progress: bool = True,
          max_bytes: int = MAX_UNPACKED_BYTES) -> Path:
    """Make sure ``root/cifar-10-batches-py`` holds the six batches: unpack the archive, downloading it if needed.

    ``url`` and ``md5`` default to the official ones (module constants URL, MD5); tests pass file:// fixtures.
    """
    root = Path(root or data_home() / "cifar10")
    url, md5 = url or URL, md5 or MD5
    folder = root / FOLDER
    if _complete(folder):
        return folder
    archive = root / ARCHIVE
    if not (archive.is_file() and file_md5(archive) == md5):
        if offline():
            state = f"{archive} has the wrong md5" if archive.is_file() else availability(root)[1]
            raise DatasetError(f"CIFAR-10: {state}; LOCALITY_OFFLINE is set, so nothing was downloaded.")
        download(url, archive, md5, progress=progress)
    extract_tar(archive, root, max_bytes=max_bytes)
    if not _complete(folder):
        raise DatasetError(f"{archive} unpacked, but {folder} lacks some of {TRAIN_BATCHES + TEST_BATCHES}; "
                           "delete both and download again.")
    return folder


def load_cifar10(progress: bool = True, *, root: Path | None = None, url: str | None = None,
                 md5: str | None = None) -> Dataset:
    """CIFAR-10, 50,000 train + 10,000 test, (3, 32, 32) in [-1, 1], with class labels."""
    folder = fetch(root, url=url, md5=md5, progress=progress)
    x_train, y_train = read_split(folder, TRAIN_BATCHES)
    x_test, y_test = read_split(folder, TEST_BATCHES)
    return Dataset(
        name="cifar10", train=to_signed_unit(x_train), test=to_signed_unit(x_test),
        fingerprint=fingerprint(x_train, y_train, x_test, y_test, recipe="cifar10:python-batches:uint8/255*2-1"),
        description=f"CIFAR-10: {len(x_train):,} training and {len(x_test):,} test images, 32x32 RGB ({folder})",
        train_labels=torch.from_numpy(y_train), test_labels=torch.from_numpy(y_test), class_names=CLASSES,
    )
