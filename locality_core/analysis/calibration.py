"""Calibrating the patch machines of Kamb & Ganguli to a reference network: per noise level, the patch size
whose outputs on the same noisy held-out images are closest to the reference's (median over images of the MSE,
or of the cosine similarity of mean-centred images). The machines and schedules are `denoisers.patches`."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from locality_core.analysis.metrics import mse_scores, pearson_scores
from locality_core.data import Dataset
from locality_core.denoisers.evaluate import noisy_heldout
from locality_core.denoisers.patches import ELSDenoiser, LSDenoiser, PatchSchedule


def image_scores(a: torch.Tensor, b: torch.Tensor, metric: str) -> torch.Tensor:
    """(n,) per-image MSE, or cosine similarity of mean-centred images ("cosine"), of a, b (n, C, H, W)."""
    if metric == "mse":
        return mse_scores(a, b)
    if metric == "cosine":
        return pearson_scores(a, b)
    raise ValueError(f"metric must be 'mse' or 'cosine', got {metric!r}")


def machine(kind: str, train: torch.Tensor, patch: int, **options) -> nn.Module:
    """An LS or ELS machine with a fixed patch size, fitted to ``train``."""
    if kind == "ls":
        return LSDenoiser(patch_size=patch).fit(Dataset.from_tensor(train))
    if kind == "els":
        return ELSDenoiser(patch_size=patch, **options).fit(Dataset.from_tensor(train))
    raise ValueError(f"kind must be 'ls' or 'els', got {kind!r}")


@torch.no_grad()
def calibrate(dataset: Dataset, reference: Callable, sigmas: list[float], sizes: list[int], *, kind: str = "els",
              n: int = 4, metric: str = "mse", seed: int = 0, progress: Callable[[str], None] | None = None,
              **options) -> PatchSchedule:
    """Fit the patch size per sigma to ``reference`` (any denoiser, e.g. our UNet).

    For each sigma the first ``n`` test images are noised (seed ``seed``), and each candidate size is scored
    by the median over images of ``metric`` between its output and the reference's. Returns a schedule with
    the calibration table in ``scores`` (one row per sigma, one column per size). ``options`` go to the
    machine (ELS: n_train, broken, seed).
    """
    sigmas = sorted(float(s) for s in sigmas)
    inputs = noisy_heldout(dataset.test[:n], sigmas, seed)
    targets = [reference(x, s) for x, s in zip(inputs, sigmas, strict=True)]
    table = np.zeros((len(sigmas), len(sizes)))
    for j, p in enumerate(sizes):                      # one machine at a time: each holds its training set
        model = machine(kind, dataset.train, p, **options)
        for i, (x, s, target) in enumerate(zip(inputs, sigmas, targets, strict=True)):
            if progress:
                progress(f"{kind} sigma={s:.4g} P={p}")
            table[i, j] = float(image_scores(model(x, s), target, metric).median())
        del model
    best = table.argmin(1) if metric == "mse" else table.argmax(1)
    return PatchSchedule(tuple(sigmas), tuple(int(sizes[b]) for b in best), f"calibrated ({metric}, n={n})",
                         tuple(tuple(float(v) for v in row) for row in table))
