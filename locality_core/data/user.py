"""The user's own images: imported once from a folder or a .zip, saved as a data set named ``user:<name>``.

Glossary
    source      a folder (searched recursively; hidden files and ``__MACOSX`` skipped) or a .zip archive
    import      read every file in memory, decode with Pillow, convert to ``mode`` ("L" or "RGB"; transparent
                pixels become black), fit to ``size`` (centre crop to the aspect ratio, then Lanczos resize),
                split about 90/10 by a hash of the file name, save ``<name>.npz`` (uint8, no pickle) and
                ``<name>.json`` (source, size, mode, counts, skipped files) in ``data_home()/user``
    skipped     files that are not readable images, listed by name with the reason; never fatal
    user:<name> how an imported data set appears in the registry, as soon as it is saved

The user's files are never modified, and nothing from a .zip is written to disk. Limits guard against
hostile input: ``max_images`` files, ``max_total_bytes`` bytes read and decoded, Pillow's decompression-bomb
limit on the pixels of one image (``Image.MAX_IMAGE_PIXELS``, left as it is), no ``..`` or absolute paths in an
archive. Sizes are checked twice: as declared (the zip's headers, a folder's listing) before anything is read,
then as read: every file is read as a stream, in chunks of `READ_CHUNK` bytes, with a running count that stops
at its declared size and at what is left of ``max_total_bytes``, whatever the header says (a member that
declares 100 bytes and inflates to gigabytes costs one chunk of memory, then is refused).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import warnings
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from locality_core import settings
from locality_core.data.base import Dataset, DatasetError, DatasetSpec, fingerprint, to_signed_unit
from locality_core.data.download import data_home
from locality_core.store.files import atomic_write
from locality_core.store.locks import owned_lock
from locality_core.store.memory import BUDGET, budget_bytes

PREFIX = "user:"
NAME_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")
MIN_IMAGES = 10
MAX_SIDE = 256
TEST_FRACTION = 0.1
MAX_IMAGES = 50_000
MAX_TOTAL_BYTES = 2**30
READ_CHUNK = 2**20

Entry = tuple[str, int, Callable[[], BinaryIO]]  # (name relative to the source, declared size in bytes, opener)


@dataclass(frozen=True)
class ImportReport:
    """What an import did. ``skipped``: (file name, reason) for every file that was not used."""

    name: str
    path: Path
    source: str
    shape: tuple[int, int, int]
    n_train: int
    n_test: int
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def summary(self) -> str:
        c, h, w = self.shape
        text = (f"imported {self.n_train + self.n_test} images from {self.source} as `{PREFIX}{self.name}` "
                f"({self.n_train} train, {self.n_test} test, {c}x{h}x{w})")
        if self.skipped:
            text += f"; skipped {len(self.skipped)}: " + ", ".join(f"{f} ({r})" for f, r in self.skipped[:5])
        return text


def user_dir() -> Path:
    return data_home() / "user"


def validate_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise DatasetError(f"invalid data set name {name!r}: use 1 to 64 letters, digits, '-' or '_'.")
    return name


def dataset_path(name: str) -> Path:
    return user_dir() / f"{validate_name(name)}.npz"


# ---------------------------------------------------------------- reading the source

def _hidden(rel: str) -> bool:
    return any(part.startswith(".") or part == "__MACOSX" for part in Path(rel).parts)


def _check_limits(entries: list[Entry], source: Path, max_images: int, max_total_bytes: int) -> None:
    if len(entries) > max_images:
        raise DatasetError(f"{source} holds {len(entries):,} files, more than max_images={max_images:,}; "
                           "import a smaller selection or raise the limit.")
    total = sum(size for _, size, _ in entries)
    if total > max_total_bytes:
        raise DatasetError(f"{source} holds {total:,} bytes (uncompressed), more than max_total_bytes="
                           f"{max_total_bytes:,}; import a smaller selection or raise the limit.")


def folder_entries(root: Path) -> list[Entry]:
    """Every regular, non-hidden file under ``root``, sorted by relative path."""
    entries = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not _hidden(d)]
        for fname in filenames:
            path = Path(dirpath) / fname
            rel = path.relative_to(root).as_posix()
            if not _hidden(rel) and path.is_file():
                entries.append((rel, path.stat().st_size, lambda path=path: open(path, "rb")))
    return sorted(entries, key=lambda e: e[0])


def zip_entries(archive: zipfile.ZipFile) -> list[Entry]:
    """Every non-hidden file in the archive, sorted; an absolute or ``..`` path refuses the archive."""
    entries = []
    for info in archive.infolist():
        name = info.filename
        if name.startswith(("/", "\\")) or ".." in re.split(r"[/\\]", name) or re.match(r"^[A-Za-z]:", name):
            raise DatasetError(f"the archive contains the unsafe path {name!r}; refused.")
        if not info.is_dir() and not _hidden(name):
            entries.append((name, info.file_size, lambda info=info: archive.open(info)))
    return sorted(entries, key=lambda e: e[0])


# ---------------------------------------------------------------- decoding one image

def _flatten(img: Image.Image) -> Image.Image:
    """Drop transparency onto black; bring 16-bit and float grayscale to 8 bits."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        return Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba)
    return img


def decode_bytes_per_pixel(img: Image.Image) -> int:
    """Upper bound on the memory per pixel of decoding and fitting ``img`` (measured at 3000x3000: float TIFF
    32.3 bytes, 16-bit PNG 28.1, RGBA PNG 20.0, RGB JPEG 12.1)."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        return 40  # through float64 (`_flatten`)
    if img.mode in ("RGBA", "LA", "PA", "P", "CMYK"):
        return 24
    return 16


class TooManyPixels(ValueError):
    """An image whose decoding would take more memory than an import may use for one image."""


def decode(data: bytes, mode: str, size: tuple[int, int] | None, max_decode_bytes: int | None = None) -> np.ndarray:
    """Image bytes -> uint8 (H, W) for "L" or (H, W, 3) for "RGB"; fitted to ``size`` = (H, W) when given.

    Raises whatever Pillow raises on a bad file; images above Pillow's pixel limit raise too, and TooManyPixels
    when decoding would take more than ``max_decode_bytes`` (checked from the header, before decoding).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(io.BytesIO(data)) as img:
            if size is None and max(img.size) > MAX_SIDE:
                raise DatasetError(f"it is {img.size[1]}x{img.size[0]}, larger than {MAX_SIDE} on a side; "
                                   "choose a size, e.g. size=(64, 64)")
            pixels = img.size[0] * img.size[1]
            if max_decode_bytes is not None and pixels * decode_bytes_per_pixel(img) > max_decode_bytes:
                most = max_decode_bytes // decode_bytes_per_pixel(img)
                raise TooManyPixels(f"{img.size[0]}x{img.size[1]} is more than the {most:,} pixels one image of it "
                                    f"may have within the memory budget ({settings.MEMORY_BUDGET_GB.name}); scale "
                                    "it down")
            img = _flatten(ImageOps.exif_transpose(img)).convert(mode)
            if size is not None:
                img = ImageOps.fit(img, (size[1], size[0]), method=Image.Resampling.LANCZOS)
            return np.asarray(img)


OBJECT_REPR = re.compile(r"<[\w.]+ (object )?at 0x[0-9a-fA-F]+>")  # <_io.BytesIO object at 0x7f...>


def _reason(exc: BaseException) -> str:
    """Why a file was skipped, in words: never an object's repr (the file is named beside the reason)."""
    if isinstance(exc, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return f"more than {Image.MAX_IMAGE_PIXELS:,} pixels (Pillow's decompression-bomb limit)"
    if isinstance(exc, UnidentifiedImageError):
        return "not an image file Pillow can read (PNG, JPEG, GIF, BMP, TIFF, WebP, ...)"
    text = OBJECT_REPR.sub("the file", str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    return text if len(text) < 120 else text[:117] + "..."


def _size_error(images: dict[str, np.ndarray]) -> DatasetError:
    groups: dict[tuple[int, int], list[str]] = {}
    for fname, arr in images.items():
        groups.setdefault(arr.shape[:2], []).append(fname)
    ranked = sorted(groups.items(), key=lambda g: -len(g[1]))
    listed = "; ".join(f"{h}x{w} ({len(f)} images, e.g. {f[0]})" for (h, w), f in ranked[:4])
    (h, w), _ = ranked[0]
    return DatasetError(f"images have {len(groups)} different sizes ({listed}{'; ...' if len(groups) > 4 else ''}); "
                        f"choose a size, e.g. size=({h}, {w}).")


# ---------------------------------------------------------------- importing

def split_by_name(names: list[str], test_fraction: float = TEST_FRACTION) -> tuple[list[str], list[str]]:
    """Deterministic train/test split: the ``test_fraction`` of names with the smallest sha256 go to test."""
    ranked = sorted(names, key=lambda n: hashlib.sha256(n.encode()).hexdigest())
    n_test = min(len(names) - 1, max(1, round(test_fraction * len(names))))
    test = set(ranked[:n_test])
    return sorted(n for n in names if n not in test), sorted(test)


class LongerThanDeclared(OSError):
    """A file held more bytes than its header or listing declared."""


def read_counted(opener: Callable[[], BinaryIO], declared: int, left: int, fname: str) -> bytes:
    """The bytes of one file, read in chunks with a running count: LongerThanDeclared past ``declared`` bytes,
    DatasetError past ``left`` (what remains of the import's byte limit). Never holds more than
    ``min(declared, left)`` bytes plus one chunk."""
    parts, count = [], 0
    with opener() as stream:
        while chunk := stream.read(min(READ_CHUNK, max(1, min(declared, left) - count + 1))):
            count += len(chunk)
            if count > left:
                raise DatasetError(f"the files read so far exceed max_total_bytes ({fname} among them); import a "
                                   "smaller selection or raise the limit.")
            if count > declared:
                raise LongerThanDeclared(f"it holds more than the {declared:,} bytes its header declares")
            parts.append(chunk)
    return b"".join(parts)


def _read_all(entries: list[Entry], mode: str, size, max_total_bytes: int, max_decode_bytes: int | None = None,
              max_kept_bytes: int | None = None):
    """The decoded images by file name, and the files skipped with why. Refused as a whole (DatasetError) when
    the files read pass ``max_total_bytes`` or the decoded images pass ``max_kept_bytes`` (default the same)."""
    max_kept_bytes = max_total_bytes if max_kept_bytes is None else max_kept_bytes
    images: dict[str, np.ndarray] = {}
    skipped: list[tuple[str, str]] = []
    decoded = read = 0
    for fname, declared, opener in entries:
        try:
            data = read_counted(opener, declared, max_total_bytes - read, fname)
        except DatasetError:  # over the import's limit: refused as a whole (a DatasetError is a RuntimeError)
            raise
        except (OSError, zipfile.BadZipFile, zlib.error, RuntimeError, NotImplementedError) as exc:
            skipped.append((fname, f"cannot be read: {_reason(exc)}"))  # e.g. no permission, encrypted, bad CRC
            continue
        read += len(data)
        try:
            arr = decode(data, mode, size, max_decode_bytes)
        except DatasetError as exc:
            raise DatasetError(f"{fname}: {exc}") from None
        except Exception as exc:  # a hostile or broken file may make Pillow raise anything
            skipped.append((fname, _reason(exc)))
            continue
        decoded += arr.nbytes
        if decoded > max_kept_bytes:
            raise DatasetError(f"the decoded images exceed {max_kept_bytes:,} bytes (max_total_bytes, or a sixth of "
                               f"the memory budget {settings.MEMORY_BUDGET_GB.name}); choose a smaller size or "
                               "fewer images.")
        images[fname] = arr
    return images, skipped


def _validate_args(mode: str, size) -> tuple[int, int] | None:
    if mode not in ("L", "RGB"):
        raise DatasetError(f"mode must be 'L' (grayscale) or 'RGB', got {mode!r}.")
    if size is None:
        return None
    try:
        h, w = (int(v) for v in size)
    except (TypeError, ValueError) as exc:
        raise DatasetError(f"size must be (height, width), got {size!r}.") from exc
    if not (1 <= h <= MAX_SIDE and 1 <= w <= MAX_SIDE):
        raise DatasetError(f"size must be between 1 and {MAX_SIDE} on each side, got {size!r}.")
    return h, w


def _entries(source: Path) -> tuple[list[Entry], zipfile.ZipFile | None]:
    if source.is_dir():
        return folder_entries(source), None
    if source.is_file() and zipfile.is_zipfile(source):
        try:
            archive = zipfile.ZipFile(source)
        except (zipfile.BadZipFile, OSError) as exc:
            raise DatasetError(f"{source} is not a readable .zip archive ({exc}).") from exc
        try:
            return zip_entries(archive), archive
        except DatasetError:
            archive.close()
            raise
    raise DatasetError(f"{source} is neither a folder nor a .zip archive.")


def import_images(source: str | Path, name: str, size: tuple[int, int] | None = None, mode: str = "L", *,
                  max_images: int = MAX_IMAGES, max_total_bytes: int = MAX_TOTAL_BYTES,
                  replace: bool = True) -> ImportReport:
    """Import the images of a folder or .zip as the data set ``user:<name>`` (replacing one of that name
    unless ``replace=False``)."""
    validate_name(name)
    size = _validate_args(mode, size)
    source = Path(source).expanduser().resolve()
    entries, archive = _entries(source)
    try:
        _check_limits(entries, source, max_images, max_total_bytes)
        need, decoding, kept = import_peak_bytes(entries, size, mode, max_total_bytes)
        with BUDGET.reserve(need, f"importing {len(entries):,} files", "import fewer images or choose a smaller size"):
            return _build_import(source, name, size, mode, entries, max_total_bytes, decoding, kept, replace)
    finally:
        if archive is not None:
            archive.close()


KEPT_COPIES = 3               # the decoded images, their stack, the (N, C, H, W) copy
DECODE_SHARE = 4              # one image may use a quarter of the memory budget to decode
IMPORT_MARGIN = 32 * 2**20


def import_peak_bytes(entries: list[Entry], size: tuple[int, int] | None, mode: str,
                      max_total_bytes: int = MAX_TOTAL_BYTES) -> tuple[int, int, int]:
    """(upper bound on an import's memory, the bytes one image may take to decode, the bytes the decoded images
    may take): the decoded images in `KEPT_COPIES` copies (at most half the budget: an import past it is refused
    as it reads), the largest file as read, one image's decoding (an image whose header says more is skipped),
    and a margin."""
    side = size or (MAX_SIDE, MAX_SIDE)
    per_image = side[0] * side[1] * (3 if mode == "RGB" else 1)
    kept = min(len(entries) * per_image, max_total_bytes, budget_bytes() // 2 // KEPT_COPIES)
    largest = max((declared for _, declared, _ in entries), default=0)
    decoding = min(budget_bytes() // DECODE_SHARE, Image.MAX_IMAGE_PIXELS * 40)
    return KEPT_COPIES * kept + largest + decoding + IMPORT_MARGIN, decoding, kept


def _build_import(source: Path, name: str, size, mode: str, entries: list[Entry], max_total_bytes: int,
                  decoding: int, kept: int, replace: bool) -> ImportReport:
    images, skipped = _read_all(entries, mode, size, max_total_bytes, decoding, kept)
    if len(images) < MIN_IMAGES:
        why = f"; skipped: {', '.join(f'{f} ({r})' for f, r in skipped[:5])}" if skipped else ""
        raise DatasetError(f"{source} has {len(images)} readable images; at least {MIN_IMAGES} are needed{why}.")
    if len({a.shape for a in images.values()}) > 1:
        raise _size_error(images)
    train_names, test_names = split_by_name(sorted(images))
    train = to_nchw([images[n] for n in train_names])
    test = to_nchw([images[n] for n in test_names])
    meta = {"name": name, "source": str(source), "mode": mode, "size": list(train.shape[2:]),
            "shape": list(train.shape[1:]), "n_train": len(train), "n_test": len(test),
            "skipped": [list(s) for s in skipped]}
    path = save(name, train, test, train_names, test_names, meta, replace=replace)
    return ImportReport(name, path, str(source), tuple(train.shape[1:]), len(train), len(test), skipped)


def to_nchw(arrays: list[np.ndarray]) -> np.ndarray:
    """A list of uint8 (H, W) or (H, W, 3) -> uint8 (N, C, H, W)."""
    stack = np.stack(arrays)
    return np.ascontiguousarray(stack[:, None] if stack.ndim == 3 else stack.transpose(0, 3, 1, 2))


def name_lock(name: str):
    """The lock that serialises writing, deleting and reading the files of ``user:<name>`` across processes."""
    return owned_lock(data_home() / ".locks", "user:" + validate_name(name), what=f"importing {PREFIX}{name}")


def save(name: str, train: np.ndarray, test: np.ndarray, train_names: list[str], test_names: list[str],
         meta: dict, *, replace: bool = True) -> Path:
    """Write ``<name>.npz`` (uint8 train/test (N, C, H, W), file names) and ``<name>.json``; returns the npz.

    Both files are written under the name's lock, so concurrent imports of one name end with the npz and json
    of the same import. ``replace=False`` refuses a name that is taken.
    """
    path = dataset_path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"train": train, "test": test, "train_files": np.array(train_names, dtype=str),
              "test_files": np.array(test_names, dtype=str)}
    with name_lock(name):
        if not replace and path.exists():
            raise DatasetError(f"a data set named {PREFIX}{name} exists already; choose another name, or replace "
                               "it on purpose (`locality import --force`).")
        atomic_write(path, lambda f: np.savez_compressed(f, **arrays))
        atomic_write(path.with_suffix(".json"), lambda f: f.write(json.dumps(meta, indent=1).encode()))
    return path


# ---------------------------------------------------------------- the saved data sets

def list_user_datasets() -> list[str]:
    """Names of the imported data sets, sorted."""
    folder = user_dir()
    if not folder.is_dir():
        return []
    return sorted(p.stem for p in folder.glob("*.npz") if NAME_PATTERN.fullmatch(p.stem) and p.is_file())


def metadata(name: str) -> dict:
    """The import's JSON metadata; {} when it is missing or unreadable (the npz alone is enough to load)."""
    try:
        meta = json.loads(dataset_path(name).with_suffix(".json").read_text())
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def missing(name: str) -> DatasetError:
    known = ", ".join(PREFIX + n for n in list_user_datasets()) or "none"
    return DatasetError(f"no imported data set {PREFIX}{name} in {user_dir()}; imported data sets: {known}. "
                        "Import images with `locality import NAME FOLDER_OR_ZIP`.")


def read_arrays(name: str) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (N, C, H, W) train and test of an imported data set; DatasetError when missing or corrupt."""
    path = dataset_path(name)
    if not path.is_file():
        raise missing(name)
    try:
        with np.load(path, allow_pickle=False) as npz:
            train, test = npz["train"], npz["test"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise DatasetError(f"{path} is corrupt ({_reason(exc)}); import the images again, or delete it with "
                           f"delete_user_dataset({name!r}).") from exc
    for arr in (train, test):
        if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[1] not in (1, 3) or len(arr) == 0:
            raise DatasetError(f"{path} is corrupt: expected uint8 (N, 1 or 3, H, W) arrays, got {arr.dtype} "
                               f"{arr.shape}; import the images again.")
    if train.shape[1:] != test.shape[1:]:
        raise DatasetError(f"{path} is corrupt: train {train.shape} and test {test.shape} differ in shape.")
    return train, test


def _reading_lock(name: str):
    """The name's lock, or none where nobody can write (a read-only data folder, e.g. a read-only mount in a
    container): there is no import to wait for, and no lock file could be made."""
    folder = dataset_path(name).parent
    return name_lock(name) if os.access(data_home(), os.W_OK) and os.access(folder, os.W_OK) \
        else contextlib.nullcontext()


def load_user_dataset(name: str) -> Dataset:
    """An imported data set, (C, H, W) as imported, in [-1, 1]; arrays and metadata of one and the same import."""
    with _reading_lock(name):
        train, test = read_arrays(name)
        meta = metadata(name)
    c, h, w = train.shape[1:]
    return Dataset(
        name=PREFIX + name, train=to_signed_unit(train), test=to_signed_unit(test),
        fingerprint=fingerprint(train, test, recipe=f"{PREFIX}{name}:npz:uint8/255*2-1"),
        description=(f"Imported from {meta.get('source', 'an unknown source')}: {len(train):,} training and "
                     f"{len(test):,} test images, {h}x{w} {'RGB' if c == 3 else 'grayscale'}"),
        params={"source": meta.get("source"), "skipped": meta.get("skipped", [])},
    )


def stored_shapes(path: Path) -> list[tuple[int, ...]]:
    """The shapes of the uint8 arrays ``train`` and ``test`` in an imported data set's npz, read from their
    headers without reading (or allocating) the arrays; DatasetError when they cannot be read."""
    shapes = []
    try:
        with zipfile.ZipFile(path) as npz:
            for member in ("train.npy", "test.npy"):
                with npz.open(member) as f:
                    version = np.lib.format.read_magic(f)
                    header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                        np.lib.format.read_array_header_2_0
                    shapes.append(tuple(int(n) for n in header(f)[0]))
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise DatasetError(f"{path} is corrupt ({_reason(exc)}); import the images again.") from exc
    return shapes


LOAD_BYTES_PER_VALUE = 5  # the uint8 arrays read from the npz and their float32 copy


def load_peak_bytes(name: str) -> int:
    """Upper bound on the memory `load_user_dataset` takes, from the arrays' headers (a crafted npz declaring a
    huge array is refused before it is allocated)."""
    return sum(LOAD_BYTES_PER_VALUE * int(np.prod(shape)) for shape in stored_shapes(dataset_path(name))) + 2**24


def user_spec(name: str) -> DatasetSpec:
    """The registry entry of an imported data set; DatasetError when there is none of that name."""
    if not dataset_path(name).is_file():
        raise missing(name)
    meta = metadata(name)
    shape = tuple(meta["shape"]) if isinstance(meta.get("shape"), list) and len(meta["shape"]) == 3 else None
    source = meta.get("source", "?")
    counts = f"{meta.get('n_train', '?')} train, {meta.get('n_test', '?')} test"
    return DatasetSpec(PREFIX + name, f"{name} (imported)", f"Your images, imported from {source} ({counts}).",
                       lambda: load_user_dataset(name), lambda: (True, f"imported into {dataset_path(name)}"),
                       shape=shape, peak_bytes=lambda: load_peak_bytes(name))


def delete_user_dataset(name: str) -> None:
    """Remove an imported data set (its npz and json). The original images are not touched."""
    path = dataset_path(name)
    with name_lock(name):
        if not path.is_file():
            raise missing(name)
        path.unlink()
        path.with_suffix(".json").unlink(missing_ok=True)
