"""Faces: the 100 face crops of scikit-image's ``lfw_subset.npy`` (Labeled Faces in the Wild), 25x25 grayscale
(a copy ships in locality_core/assets/data).

The file holds 200 images in [0, 1]: 100 faces, then 100 non-faces (not used). Faces 0..89 and their mirror
images are the training set (180), faces 90..99 and their mirror images the test set (20): a test face is
never seen in training, mirrored or not. Centred faces are the paper's example of specialised data whose
denoising fields become face-shaped (METHODS.md section 8).
"""

from __future__ import annotations

import numpy as np

from locality_core.data.base import Dataset, DatasetError, fingerprint, to_signed_unit
from locality_core.data.bundled import bundled_available, bundled_file

FILE = "lfw_subset.npy"
N_FACES = 100
N_TRAIN_FACES = 90


def availability() -> tuple[bool, str]:
    return bundled_available(FILE)


def read_faces() -> np.ndarray:
    """float (100, 25, 25) in [0, 1]."""
    path = bundled_file(FILE)
    try:
        stack = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{path} is unreadable ({exc}); reinstall locality-explorer.") from exc
    if stack.ndim != 3 or len(stack) < N_FACES or stack.min() < 0 or stack.max() > 1:
        raise DatasetError(f"{path}: expected (200, 25, 25) floats in [0, 1], got {stack.shape}.")
    return stack[:N_FACES]


def with_mirrors(faces: np.ndarray) -> np.ndarray:
    """(N, H, W) -> (2N, H, W): the faces, then each face flipped left to right."""
    return np.concatenate([faces, faces[:, :, ::-1]])


def load_faces() -> Dataset:
    """180 training and 20 test faces, (1, 25, 25) in [-1, 1]."""
    faces = read_faces()
    x_train = with_mirrors(faces[:N_TRAIN_FACES])
    x_test = with_mirrors(faces[N_TRAIN_FACES:])
    return Dataset(
        name="faces", train=to_signed_unit(x_train), test=to_signed_unit(x_test),
        fingerprint=fingerprint(faces, recipe=f"faces:lfw_subset:first-{N_FACES}:train-{N_TRAIN_FACES}:"
                                              "with-mirrors:float*2-1"),
        description=(f"Faces (LFW crops of scikit-image's sample data): {len(x_train)} training and {len(x_test)} test "
                     "images (faces plus their mirror images; test faces held out), 25x25 grayscale"),
    )
