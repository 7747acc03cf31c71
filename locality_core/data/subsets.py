"""Disjoint training subsets of growing size, for the memorisation-to-generalisation experiment
(Kadkhodaie, Guth, Simoncelli, Mallat, ICLR 2024).

Glossary
    N        images per subset
    split    "A" or "B": the first or the second block of N images of one seeded permutation of the
             training set, so that A and B never share an image (N can be at most half the training set)
    seed     the permutation's seed; the same for every N, so the A subset of N = 10 lies inside that of N = 100
    indices  the training-image indices of a subset; their sha256 enters the subset's fingerprint, so that
             weights trained on one subset are refused for another

A subset is a `Dataset` like any other: its ``train`` holds the N images, its ``test`` the full test split, its
fingerprint is the full data set's plus a suffix naming N, the split, the seed and the indices' hash.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace

import torch

from locality_core.data import Dataset, DatasetError

SPLITS = ("A", "B")
SUBSET_SEED = 0


def subset_indices(n_total: int, n: int, split: str, seed: int = SUBSET_SEED) -> torch.Tensor:
    """(n,) int64 indices into a training set of ``n_total`` images; A and B are disjoint for every n."""
    if split not in SPLITS:
        raise DatasetError(f"--split must be A or B, got {split!r}")
    if n < 1 or 2 * n > n_total:
        raise DatasetError(f"--subset must be between 1 and half the training set ({n_total // 2:,}), got {n:,}")
    perm = torch.randperm(n_total, generator=torch.Generator().manual_seed(seed))
    start = 0 if split == "A" else n
    return perm[start:start + n].sort().values


def indices_digest(indices: torch.Tensor) -> str:
    return hashlib.sha256(indices.to(torch.int64).numpy().tobytes()).hexdigest()


def training_subset(dataset: Dataset, n: int, split: str, seed: int = SUBSET_SEED) -> Dataset:
    """``dataset`` restricted to the N training images of one split (test split unchanged)."""
    idx = subset_indices(len(dataset.train), n, split, seed)
    digest = indices_digest(idx)
    fingerprint = _fingerprint(dataset.fingerprint, n, split, seed, digest)
    labels = dataset.train_labels[idx] if dataset.train_labels is not None else None
    params = {**dataset.params, "subset": n, "split": split, "subset_seed": seed, "indices_sha256": digest}
    return replace(
        dataset, train=dataset.train[idx].contiguous(), train_labels=labels, params=params,
        fingerprint=fingerprint, stats=None,  # statistics given with the images are not the subset's
        description=f"{dataset.description}; training subset {split} of {n:,} images (permutation seed {seed})",
    )


def _fingerprint(base: str, n: int, split: str, seed: int, digest: str) -> str:
    return f"{base}:subset-{n}-{split}-seed{seed}-{digest[:16]}"


def subset_fingerprint(dataset: Dataset, n: int, split: str, seed: int = SUBSET_SEED) -> str:
    """`training_subset(dataset, n, split, seed).fingerprint` without copying the subset's images."""
    idx = subset_indices(len(dataset.train), n, split, seed)
    return _fingerprint(dataset.fingerprint, n, split, seed, indices_digest(idx))


def subset_tag(n: int, split: str) -> str:
    """Folder name of a subset's network: ``n10-A``."""
    return f"n{n}-{split}"
