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

import numpy as np
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


# ---------------------------------------------------------------- cached trajectories (the Samples page, the warm-up)

def _on_device(denoiser, device: str):
    """(denoiser on ``device``, device used): a copy for a torch module off the CPU, else the shared instance."""
    if device == "cpu" or not isinstance(denoiser, torch.nn.Module):
        return denoiser, "cpu"
    try:
        import copy

        return copy.deepcopy(denoiser).to(device), device
    except (RuntimeError, AssertionError, TypeError):  # no such device, or a model that cannot move
        return denoiser, "cpu"


def trajectory_key(cache, dataset, name: str, n: int, steps: int, seed: int, options: dict | None = None) -> str:
    from .denoisers import denoiser_cache_id

    return cache.make_key("app-samples", dataset.fingerprint, denoiser_cache_id(name, dataset, **(options or {})),
                          name, n, steps, seed)


def trajectory_is_cached(dataset, name: str, n: int, steps: int, seed: int, cache=None,
                         options: dict | None = None) -> bool:
    from .cache import default_cache

    cache = cache or default_cache()
    return trajectory_key(cache, dataset, name, n, steps, seed, options) in cache


def cached_trajectory(dataset, name: str, n: int, steps: int, seed: int, *, device: str = "cpu",
                      callback: Callable[[dict], None] | None = None, cache=None, options: dict | None = None) -> dict:
    """DDIM with registered denoiser ``name`` from the shared initial noise of ``seed``, every step kept.

    Returns {"x": (S, n, C, H, W), "x0_hat": (S, n, C, H, W), "device": ()} as numpy, computed once and kept in
    the disk cache (by data fingerprint, denoiser cache id with its ``options``, n, steps, seed): the Samples page
    and the warm-up read the same entry. ``callback`` sees each step (dict(step, sigma, t, x, x0_hat)) while
    computing.
    """
    from .cache import default_cache
    from .denoisers import get_denoiser
    from .schedule import ddim_sigmas

    cache = cache or default_cache()
    sigmas = ddim_sigmas(steps)

    def compute():
        z = initial_noise(n, tuple(dataset.shape), seed, sigmas[0])
        denoiser, used = _on_device(get_denoiser(name, dataset, **(options or {})), device)
        xs, x0s = [], []

        def keep(info):
            xs.append(info["x"].float().cpu().numpy())
            x0s.append(info["x0_hat"].float().cpu().numpy())
            if callback is not None:
                callback(info)

        sample_ddim(denoiser, z.to(used), sigmas, callback=keep)
        return {"x": np.stack(xs), "x0_hat": np.stack(x0s), "device": np.array(used)}

    return cache.get_or_compute(trajectory_key(cache, dataset, name, n, steps, seed, options), compute)
