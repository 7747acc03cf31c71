"""What every data set is: train and test tensors in [-1, 1], a fingerprint, a description.

Glossary
    Dataset       loaded data: ``train``/``test`` float32 tensors of shape (N, C, H, W) in [-1, 1];
                  ``Dataset.from_tensor(train)`` wraps images already in memory (no fingerprint)
    DatasetSpec   a registry entry: how to load one, whether it can be had on this machine
    fingerprint   sha256 of the pixel content and the preprocessing: the cache key of everything derived
    DatasetError  every problem a user can cause or fix (unknown name, missing files, bad images): its
                  message says what to do; the CLI and the app show it instead of a traceback
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch


class DatasetError(RuntimeError):
    """A data set cannot be had or used; the message says why and what to do."""


@dataclass(frozen=True, eq=False)
class Dataset:
    """A loaded data set. ``train``/``test``: float32 (N, C, H, W) in [-1, 1]."""

    name: str
    train: torch.Tensor
    test: torch.Tensor
    fingerprint: str
    description: str
    train_labels: torch.Tensor | None = None
    test_labels: torch.Tensor | None = None
    class_names: tuple[str, ...] = ()
    notice: str | None = None  # shown to the user, e.g. "full MNIST not found, using the 5k subset"
    params: dict = field(default_factory=dict)
    stats: object | None = None  # stats.DataStats given with the images (`from_tensor`); None: from ``train``

    @classmethod
    def from_tensor(cls, train: torch.Tensor, *, stats: object | None = None, test: torch.Tensor | None = None,
                    name: str = "tensor") -> Dataset:
        """An in-memory data set around training images ``train`` (N, C, H, W): how denoisers are fitted to a
        tensor (a shard, a subset, a test's toy data). It has no fingerprint, so nothing derived from it is
        cached on disk. ``stats``: the `stats.DataStats` to fit to instead of those computed from ``train``
        (e.g. those of the whole training set, for one shard of it)."""
        test = train[:0] if test is None else test
        return cls(name, train, test, "", f"{len(train)} images given as a tensor", stats=stats)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W)."""
        return tuple(self.train.shape[1:])  # type: ignore[return-value]

    @property
    def d(self) -> int:
        c, h, w = self.shape
        return c * h * w

    @property
    def channels(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        c, h, w = self.shape
        return (f"Dataset({self.name!r}, train={len(self.train)}, test={len(self.test)}, "
                f"shape=({c}, {h}, {w}), fingerprint={self.fingerprint[:12]})")


@dataclass(frozen=True)
class DatasetSpec:
    """A registry entry.

    ``load(**params) -> Dataset``; ``availability() -> (available, how-to-get-it message)``.
    ``params`` lists the keyword arguments ``load`` accepts, with their defaults. ``peak_bytes(**params)``: an
    upper bound on the peak memory of loading, in bytes, computed without loading (the memory budget's check;
    the tests measure it against the real peak at the options' extremes).
    """

    name: str
    title: str
    description: str
    load: Callable[..., Dataset]
    availability: Callable[[], tuple[bool, str]]
    params: dict = field(default_factory=dict)
    shape: tuple[int, int, int] | None = None  # (C, H, W) when fixed
    sizes: tuple[int, int] | None = None  # (n_train, n_test) with the default params, when known without loading
    peak_bytes: Callable[..., int] | None = None  # an upper bound on the memory ``load(**params)`` takes


def to_signed_unit(images: np.ndarray) -> torch.Tensor:
    """uint8 images (N, H, W) or (N, H, W, C) or (N, C, H, W) float in [0, 1] -> float32 (N, C, H, W) in [-1, 1]."""
    arr = np.asarray(images)
    if arr.ndim == 3:
        arr = arr[:, None]
    elif arr.ndim == 4 and arr.shape[-1] in (1, 3) and arr.shape[1] not in (1, 3):
        arr = arr.transpose(0, 3, 1, 2)
    if arr.ndim != 4:
        raise DatasetError(f"expected a stack of images, got an array of shape {arr.shape}")
    out = np.ascontiguousarray(arr).astype(np.float32)  # one float copy; the arithmetic below is in place
    if arr.dtype == np.uint8:
        out /= 255.0
    out *= 2.0
    out -= 1.0
    return torch.from_numpy(out)


def fingerprint(*arrays: torch.Tensor | np.ndarray | None, recipe: str) -> str:
    """sha256 over the arrays' shapes and bytes plus a preprocessing recipe string."""
    h = hashlib.sha256(recipe.encode())
    for a in arrays:
        if a is None:
            h.update(b"none")
            continue
        arr = a.numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
        arr = np.ascontiguousarray(arr)
        h.update(f"{arr.dtype}{arr.shape}".encode())
        h.update(memoryview(arr).cast("B"))
    return h.hexdigest()
