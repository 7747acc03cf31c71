"""Held-out denoising error on the reference DDIM grid: the yardstick of every denoiser.

MSE is per pixel, on x0 in [-1, 1], over the first ``n`` test images, with noise drawn from a fixed seed
(the same noise for every denoiser, so their numbers compare directly).
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from .data import Dataset
from .schedule import REFERENCE_SIGMAS, REFERENCE_TIMESTEPS, sigma_to_t

EVAL_IMAGES = 2000
EVAL_SEED = 0


def noise_for(shape: tuple[int, ...], index: int, seed: int = EVAL_SEED) -> torch.Tensor:
    """The evaluation noise of grid point ``index``: identical for every denoiser."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed * 1000 + index))


@torch.no_grad()
def heldout_mse(denoiser, x0: torch.Tensor, sigmas: list[float], *, seed: int = EVAL_SEED, batch: int = 500,
                progress: bool = False, desc: str = "eval") -> list[float]:
    """Per-pixel MSE of ``denoiser`` on x0 (n, C, H, W) at each sigma."""
    errors = []
    for i, sigma in enumerate(tqdm(sigmas, desc=desc, disable=not progress, leave=False)):
        noise = noise_for(tuple(x0.shape), i, seed)
        total = 0.0
        for start in range(0, len(x0), batch):
            xb = x0[start:start + batch]
            x0_hat = denoiser(xb + sigma * noise[start:start + batch], sigma)
            total += float((x0_hat - xb).double().pow(2).sum())
        errors.append(total / x0.numel())
    return errors


def heldout_mse_table(dataset: Dataset, denoisers: dict, *, n: int = EVAL_IMAGES, sigmas: list[float] | None = None,
                      seed: int = EVAL_SEED, include_wiener: bool = True, progress: bool = False) -> list[dict]:
    """Rows ``{"t", "sigma", "<name>": mse, ...}``, one per sigma (default: the reference grid).

    The Wiener denoiser is added as the baseline unless ``include_wiener`` is False.
    """
    sigmas = list(REFERENCE_SIGMAS if sigmas is None else sigmas)
    x0 = dataset.test[:n]
    models = dict(denoisers)
    if include_wiener and "wiener" not in models:
        from .wiener import WienerDenoiser

        models["wiener"] = WienerDenoiser().fit(dataset)
    columns = {name: heldout_mse(m, x0, sigmas, seed=seed, progress=progress, desc=name) for name, m in models.items()}
    rows = []
    for i, sigma in enumerate(sigmas):
        t = REFERENCE_TIMESTEPS[i] if sigmas == list(REFERENCE_SIGMAS) else round(float(sigma_to_t(sigma)), 1)
        rows.append({"t": t, "sigma": sigma, **{name: col[i] for name, col in columns.items()}})
    return rows
