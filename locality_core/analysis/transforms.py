"""Locality follows the data: transforms of a data set that change its statistics, and so its fields.

Glossary
    permutation   one fixed shuffle ``perm`` of the H*W pixel positions, applied to every image (all channels
                  move together): new pixel p takes the value of old pixel perm[p], so Sigma' = Pi Sigma Pi^T and
                  every Wiener field is the old one, permuted (local in the permuted space, scattered in pixels)
    injection     x' = x + s * z * w, one z ~ N(0, 1) per image, a fixed template w (C, H, W): adds s^2 w w^T to
                  Sigma, so the fields of pixels on w take w's shape (not clipped, to keep that exact)
    W template    the paper's pattern: a "W" drawn with lines of a given thickness, 1 on the stroke, 0 elsewhere
    one class     only the images of one label: specialised data, object-shaped fields

Every transform is a pure function returning a new `Dataset` with its own fingerprint (the base fingerprint plus
the transform's recipe, so nothing derived from the base data is reused by mistake), a description saying what
was done, and the transform's parameters in ``params``. Randomness comes from an explicit seed.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch
from PIL import Image, ImageDraw

from locality_core.data import Dataset, DatasetError

__all__ = ["derived_fingerprint", "inject_pattern", "keep_class", "permute_pixels", "pixel_permutation",
           "unpermute_map", "w_template"]


def derived_fingerprint(base: Dataset, recipe: str) -> str:
    """sha256 of the base data set's fingerprint and a transform recipe."""
    return hashlib.sha256(f"{base.fingerprint}|{recipe}".encode()).hexdigest()


def _derived(base: Dataset, suffix: str, recipe: str, what: str, train: torch.Tensor, test: torch.Tensor,
             params: dict, train_labels=None, test_labels=None) -> Dataset:
    return Dataset(
        name=f"{base.name}+{suffix}", train=train, test=test, fingerprint=derived_fingerprint(base, recipe),
        description=f"{base.description}; {what}", train_labels=train_labels, test_labels=test_labels,
        class_names=base.class_names, params={**params, "base": base.name, "base_fingerprint": base.fingerprint},
    )


# ---------------------------------------------------------------- fixed pixel permutation

def pixel_permutation(n_pixels: int, seed: int = 0) -> np.ndarray:
    """(n_pixels,) int64 permutation of the pixel positions, from ``seed``."""
    return np.random.default_rng([seed, 7]).permutation(n_pixels).astype(np.int64)


def _permute(x: torch.Tensor, perm: np.ndarray) -> torch.Tensor:
    n, c, h, w = x.shape
    index = torch.from_numpy(perm)
    return x.reshape(n, c, h * w)[:, :, index].reshape(n, c, h, w).contiguous()


def permute_pixels(dataset: Dataset, seed: int = 0) -> Dataset:
    """Every image with its H*W pixel positions shuffled by one fixed permutation (``params["perm"]``)."""
    _, h, w = dataset.shape
    perm = pixel_permutation(h * w, seed)
    return _derived(dataset, f"permuted{seed}", f"permute-pixels:seed={seed}",
                    f"pixel positions shuffled by one fixed permutation (seed {seed})",
                    _permute(dataset.train, perm), _permute(dataset.test, perm), {"perm": perm, "seed": seed},
                    dataset.train_labels, dataset.test_labels)


def unpermute_map(field_map: np.ndarray, perm: np.ndarray) -> np.ndarray:
    """A map (..., H, W) in the permuted layout, put back where each value's pixel was in the original images.

    ``out[..., perm[q]] = map[..., q]``: a permuted field, unpermuted, is the original data's field.
    """
    arr = np.asarray(field_map)
    flat = arr.reshape(*arr.shape[:-2], -1)
    out = np.empty_like(flat)
    out[..., perm] = flat
    return out.reshape(arr.shape)


# ---------------------------------------------------------------- pattern injection

def w_template(height: int, width: int, thickness: int | None = None) -> np.ndarray:
    """(H, W) float64 mask of a "W" spanning the image (1 on the stroke, 0 elsewhere)."""
    if height < 4 or width < 4:
        raise ValueError(f"a W needs at least 4x4 pixels, got {height}x{width}")
    thickness = thickness or max(1, round(min(height, width) / 9))
    scale = 8  # draw large, then reduce: even strokes at any size
    img = Image.new("L", (width * scale, height * scale), 0)
    top, bottom = 0.2 * height * scale, 0.8 * height * scale
    xs = np.linspace(0.15, 0.85, 5) * width * scale
    points = [(xs[0], top), (xs[1], bottom), (xs[2], top + 0.25 * (bottom - top)), (xs[3], bottom), (xs[4], top)]
    ImageDraw.Draw(img).line(points, fill=255, width=thickness * scale, joint="curve")
    small = img.resize((width, height), Image.Resampling.BOX)
    return (np.asarray(small, dtype=np.float64) >= 128).astype(np.float64)


def _template(mask, shape: tuple[int, int, int]) -> np.ndarray:
    c, h, w = shape
    if isinstance(mask, str):
        if mask != "W":
            raise ValueError(f"unknown template {mask!r}; use 'W' or an (H, W) / (C, H, W) array")
        mask = w_template(h, w)
    arr = np.asarray(mask, dtype=np.float64)
    if arr.shape == (h, w):
        arr = np.broadcast_to(arr, (c, h, w))
    if arr.shape != (c, h, w):
        raise ValueError(f"template of shape {arr.shape} does not fit images of shape {(c, h, w)}")
    if not np.isfinite(arr).all() or not np.any(arr):
        raise ValueError("the template must be finite and not all zero")
    return np.array(arr, dtype=np.float64)  # a writable copy (broadcast views are read-only)


def _inject(x: torch.Tensor, template: np.ndarray, strength: float, rng: np.random.Generator) -> torch.Tensor:
    z = torch.from_numpy(rng.standard_normal(len(x))).to(x.dtype)
    w = torch.from_numpy(template).to(x.dtype)
    return x + strength * z.view(-1, 1, 1, 1) * w


def inject_pattern(dataset: Dataset, strength: float = 1.0, mask="W", seed: int = 0) -> Dataset:
    """x' = x + strength * z * w with one z ~ N(0, 1) per image; ``mask`` is "W" or an (H, W) / (C, H, W) array.

    Values are not clipped to [-1, 1], so the covariance gains exactly ``strength^2 w w^T`` (in expectation).
    The template is in ``params["template"]`` (C, H, W).
    """
    strength = float(strength)
    if not np.isfinite(strength) or strength < 0:
        raise ValueError(f"strength must be a finite number >= 0, got {strength}")
    template = _template(mask, dataset.shape)
    digest = hashlib.sha256(template.tobytes()).hexdigest()[:16]
    label = "a W" if isinstance(mask, str) else f"a given mask ({int((template != 0).sum())} nonzero entries)"
    return _derived(
        dataset, f"pattern{strength:g}", f"inject:strength={strength!r}:template={digest}:seed={seed}",
        f"{label} added to every image with a random N(0, 1) amplitude times {strength:g} (seed {seed})",
        _inject(dataset.train, template, strength, np.random.default_rng([seed, 0])),
        _inject(dataset.test, template, strength, np.random.default_rng([seed, 1])),
        {"template": template, "strength": strength, "seed": seed}, dataset.train_labels, dataset.test_labels)


# ---------------------------------------------------------------- one class

def has_class(dataset: Dataset, label: int) -> bool:
    """Whether `keep_class` can keep class ``label``: labels on both splits, 2 training and 1 test image of it
    (natural-patches' classes are photographs, and its test photographs are others than its training ones)."""
    if dataset.train_labels is None or dataset.test_labels is None:
        return False
    return int((dataset.train_labels == label).sum()) >= 2 and int((dataset.test_labels == label).sum()) >= 1


def keep_class(dataset: Dataset, label: int | str) -> Dataset:
    """Only the images of one class (a label index or a class name); DatasetError without labels."""
    if dataset.train_labels is None or dataset.test_labels is None:
        raise DatasetError(f"{dataset.name!r} has no class labels; keeping one class needs a labelled data set "
                           "such as fashion-mnist or mnist-5k.")
    if isinstance(label, str):
        if label not in dataset.class_names:
            raise DatasetError(f"{dataset.name!r} has no class {label!r}; its classes: "
                               f"{', '.join(dataset.class_names)}")
        label = dataset.class_names.index(label)
    label = int(label)
    train_sel, test_sel = dataset.train_labels == label, dataset.test_labels == label
    if not has_class(dataset, label):
        raise DatasetError(f"{dataset.name!r} has too few images of class {label} "
                           f"({int(train_sel.sum())} train, {int(test_sel.sum())} test).")
    name = dataset.class_names[label] if label < len(dataset.class_names) else str(label)
    return _derived(dataset, f"class{label}", f"keep-class:{label}",
                    f"only class {label} ({name}): {int(train_sel.sum()):,} training and "
                    f"{int(test_sel.sum()):,} test images",
                    dataset.train[train_sel].contiguous(), dataset.test[test_sel].contiguous(),
                    {"label": label, "class_name": name}, dataset.train_labels[train_sel],
                    dataset.test_labels[test_sel])
