"""Samplers: plain functions in the k-diffusion style, one signature, any denoiser D(x, sigma) -> x0_hat.

Glossary
    sigmas          the noise levels visited, high to low (e.g. `schedule.ddim_sigmas(10)`: t = 900 ... 0)
    DDIM (eta = 0)  in sigma form one Euler step: x_next = x0_hat + (sigma_next / sigma) * (x - x0_hat);
                    the last step returns x0_hat itself
    initial noise   z * sqrt(1 + sigma_start^2), z ~ N(0, I): pure DDPM noise at t_start in sigma form.
                    All denoisers of a comparison start from the same z (same seed)
    callback        called after each denoiser evaluation with dict(step, sigma, t, x, x0_hat)
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from tqdm.auto import tqdm

from .schedule import initial_scale, sigma_to_t


def initial_noise(n: int, shape: tuple[int, int, int], seed: int, sigma_start: float, *,
                  dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> torch.Tensor:
    """(n, C, H, W) starting point z * sqrt(1 + sigma_start^2), z drawn from torch.Generator(seed)."""
    z = torch.randn((n, *shape), generator=torch.Generator().manual_seed(int(seed)), dtype=dtype)
    return (z * initial_scale(float(sigma_start))).to(device)


@torch.no_grad()
def sample_ddim(denoiser: Callable, x: torch.Tensor, sigmas: list[float], *,
                callback: Callable[[dict], None] | None = None) -> torch.Tensor:
    """DDIM (eta = 0) from x (B, C, H, W) at sigmas[0] through every sigma; returns the final x0_hat."""
    sigmas = [float(s) for s in sigmas]
    x0_hat = x
    for i, sigma in enumerate(sigmas):
        x0_hat = denoiser(x, sigma)
        if callback is not None:
            callback({"step": i, "sigma": sigma, "t": float(sigma_to_t(sigma)), "x": x, "x0_hat": x0_hat})
        if i + 1 < len(sigmas):
            x = x0_hat + (sigmas[i + 1] / sigma) * (x - x0_hat)
    return x0_hat


@torch.no_grad()
def sample_trajectories(denoiser: Callable, x: torch.Tensor, sigmas: list[float]) -> dict[str, torch.Tensor]:
    """DDIM keeping every step: {"x": (S, B, C, H, W) inputs, "x0_hat": (S, B, C, H, W), "sigmas": (S,)}."""
    xs, x0s = [], []

    def keep(info: dict) -> None:
        xs.append(info["x"])
        x0s.append(info["x0_hat"])

    sample_ddim(denoiser, x, sigmas, callback=keep)
    return {"x": torch.stack(xs), "x0_hat": torch.stack(x0s), "sigmas": torch.tensor([float(s) for s in sigmas])}


@torch.no_grad()
def sample_many(denoisers: dict[str, Callable], n: int, seed: int, sigmas: list[float], *,
                shape: tuple[int, int, int], batch_size: int = 8, progress: bool = False) -> dict[str, torch.Tensor]:
    """Final samples (n, C, H, W) of every denoiser, all from the same initial noise (seed, sigmas[0])."""
    x = initial_noise(n, shape, seed, sigmas[0])
    out = {}
    for name, denoiser in denoisers.items():
        batches = []
        steps = tqdm(total=len(sigmas) * -(-n // batch_size), desc=f"sampling {name}", disable=not progress,
                     leave=False)
        for start in range(0, n, batch_size):
            batches.append(sample_ddim(denoiser, x[start:start + batch_size], sigmas,
                                       callback=lambda info, bar=steps: bar.update(1)))
        steps.close()
        out[name] = torch.cat(batches)
    return out
