"""Held-out denoising error on the reference DDIM grid: the yardstick of every denoiser.

MSE is per pixel, on x0 in [-1, 1], over the first ``n`` test images, with noise drawn from a fixed seed
(the same noise for every denoiser, so their numbers compare directly).

Glossary
    noisy_heldout  x0 + sigma * eps at each of S noise levels, (S, B, C, H, W): the one way noisy held-out
                   inputs are drawn (evaluation, agreement, fields, bases, calibration, kernel comparisons)
    grid seed      evaluation draws grid point i's noise from its own generator, seeded ``seed * 1000 + i``
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from locality_core.data import Dataset
from locality_core.denoisers.wiener import WienerDenoiser
from locality_core.schedule import REFERENCE_SIGMAS, REFERENCE_TIMESTEPS, sigma_to_t

EVAL_IMAGES = 2000
EVAL_SEED = 0


def noisy_heldout(x0: torch.Tensor, sigmas, seed: int | None = None, *,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """x0 (B, C, H, W), sigmas scalar or (S,) -> x0 + sigma_s * eps_s, (S, B, C, H, W), in x0's dtype.

    eps (S, B, C, H, W) is ONE standard normal draw (CPU) from ``generator``, else from a fresh generator
    seeded ``seed``, else from torch's global generator. One draw, not one per sigma: the CPU sampler fills
    blocks of 16 values, so S draws of B*C*H*W values equal one draw of S*B*C*H*W only when B*C*H*W is a
    multiple of 16.
    """
    if generator is None and seed is not None:
        generator = torch.Generator().manual_seed(seed)
    sig = torch.as_tensor(sigmas, dtype=x0.dtype).reshape(-1)
    eps = torch.randn((len(sig), *x0.shape), generator=generator, dtype=x0.dtype).to(x0.device)
    return x0 + sig.to(x0.device).view(-1, 1, 1, 1, 1) * eps


def grid_seed(index: int, seed: int = EVAL_SEED) -> int:
    """The seed of grid point ``index``'s evaluation noise: each sigma has its own, identical for every denoiser."""
    return seed * 1000 + index


@torch.no_grad()
def heldout_mse(denoiser, x0: torch.Tensor, sigmas: list[float], *, seed: int = EVAL_SEED, batch: int = 500,
                progress: bool = False, desc: str = "eval") -> list[float]:
    """Per-pixel MSE of ``denoiser`` on x0 (n, C, H, W) at each sigma."""
    errors = []
    for i, sigma in enumerate(tqdm(sigmas, desc=desc, disable=not progress, leave=False)):
        x = noisy_heldout(x0, sigma, grid_seed(i, seed))[0]
        total = 0.0
        for start in range(0, len(x0), batch):
            xb = x0[start:start + batch]
            x0_hat = denoiser(x[start:start + batch], sigma)
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
        models["wiener"] = WienerDenoiser().fit(dataset)
    columns = {name: heldout_mse(m, x0, sigmas, seed=seed, progress=progress, desc=name) for name, m in models.items()}
    rows = []
    for i, sigma in enumerate(sigmas):
        t = REFERENCE_TIMESTEPS[i] if sigmas == list(REFERENCE_SIGMAS) else round(float(sigma_to_t(sigma)), 1)
        rows.append({"t": t, "sigma": sigma, **{name: col[i] for name, col in columns.items()}})
    return rows
