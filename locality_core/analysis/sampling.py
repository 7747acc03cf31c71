"""Samplers: plain functions in the k-diffusion style, one signature, any denoiser D(x, sigma) -> x0_hat.

Glossary
    sigmas          the noise levels visited, high to low (e.g. `schedule.ddim_sigmas(10)`: t = 900 ... 0)
    DDIM (eta = 0)  in sigma form one Euler step: x_next = x0_hat + (sigma_next / sigma) * (x - x0_hat);
                    the last step returns x0_hat itself
    initial noise   z * sqrt(1 + sigma_start^2), z ~ N(0, I): pure DDPM noise at t_start in sigma form.
                    All denoisers of a comparison start from the same z (same seed)
    callback        called after each denoiser evaluation with dict(step, sigma, t, x, x0_hat)
    run             one sampling run of a registered denoiser (data, denoiser, n, steps, seed), every step kept,
                    cached on disk by `cached_trajectory`: `locality sample`, the Samples page and the warm-up
                    read and write the same entry
    per seed        a measurement over many samples (`locality compare`, the memorisation table) draws sample i
                    from its own seed (`initial_noise(1, ..., seeds[i])`) and keeps each final sample under its
                    own key (`seed_samples`): a larger n computes only the new seeds, and an interrupted run
                    resumes where it stopped
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from locality_core.denoisers.registry import denoiser_cache_id, get_denoiser
from locality_core.progress import Progress
from locality_core.schedule import ddim_sigmas, initial_scale, sigma_to_t
from locality_core.store.cache import cache_kind, default_cache
from locality_core.store.memory import BUDGET


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
def sample_trajectories(denoiser: Callable, x: torch.Tensor, sigmas: list[float], *,
                        callback: Callable[[dict], None] | None = None) -> dict[str, torch.Tensor]:
    """DDIM keeping every step: {"x": (S, B, C, H, W) inputs, "x0_hat": (S, B, C, H, W), "sigmas": (S,)};
    ``callback`` as in `sample_ddim`."""
    xs, x0s = [], []

    def keep(info: dict) -> None:
        xs.append(info["x"])
        x0s.append(info["x0_hat"])
        if callback is not None:
            callback(info)

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


# ---------------------------------------------------------------- per seed, each sample cached on its own

def cached_items(keys: list[str | None], compute: Callable[[list[int]], np.ndarray], *, batch_size: int = 8,
                 cache=None, progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """Stack of per-item arrays: item i read from the cache under ``keys[i]``, or computed by
    ``compute(indices) -> (len(indices), ...)`` in batches of ``batch_size`` missing items and stored at once
    (None keys: never cached). ``progress(done, missing)`` after each batch."""
    cache = cache or default_cache()
    items: list[np.ndarray | None] = [None] * len(keys)
    for i, key in enumerate(keys):
        hit = cache.get(key) if key is not None else None
        items[i] = None if hit is None else hit["value"]
    missing = [i for i, v in enumerate(items) if v is None]
    for start in range(0, len(missing), batch_size):
        part = missing[start:start + batch_size]
        values = np.asarray(compute(part))
        for i, v in zip(part, values, strict=True):
            items[i] = v
            if keys[i] is not None:
                cache.set(keys[i], {"value": v})
        if progress is not None:
            progress(start + len(part), len(missing))
    return np.stack(items)


SEED_SAMPLES = cache_kind("seed-samples")


def seed_samples(denoiser: Callable, seeds: list[int], sigmas: list[float], *, shape: tuple[int, int, int],
                 ids: tuple | None = None, batch_size: int = 8, cache=None,
                 progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """Final DDIM samples (n, C, H, W), sample i from ``initial_noise(1, shape, seeds[i], sigmas[0])``; with
    ``ids`` (what the denoiser's output depends on: data fingerprint, denoiser cache id) each is kept in the disk
    cache on its own, so a run over more seeds computes only the new ones."""
    sigma_text = ",".join(f"{s:.6g}" for s in sigmas)
    keys = [None if ids is None else SEED_SAMPLES.key(*ids, sigma_text, int(s)) for s in seeds]

    @torch.no_grad()
    def compute(idx: list[int]) -> np.ndarray:
        z = torch.cat([initial_noise(1, shape, seeds[i], sigmas[0]) for i in idx])
        return sample_ddim(denoiser, z, sigmas).float().cpu().numpy()

    return torch.from_numpy(cached_items(keys, compute, batch_size=batch_size, cache=cache, progress=progress))


# ---------------------------------------------------------------- one sampling run, cached (CLI, Samples page, warm-up)

def _on_device(denoiser, device: str):
    """(denoiser on ``device``, device used): a copy for a torch module off the CPU, else the shared instance."""
    if device == "cpu" or not isinstance(denoiser, torch.nn.Module):
        return denoiser, "cpu"
    try:
        return copy.deepcopy(denoiser).to(device), device
    except (RuntimeError, AssertionError, TypeError):  # no such device, or a model that cannot move
        return denoiser, "cpu"


def trajectories(denoiser: Callable, z: torch.Tensor, sigmas: list[float], *, batch_size: int = 8,
                 callback: Callable[[dict], None] | None = None) -> dict[str, np.ndarray]:
    """`sample_trajectories` from z (n, C, H, W) in batches of ``batch_size`` inputs, as float32 numpy:
    {"x": (S, n, C, H, W), "x0_hat": (S, n, C, H, W)}. ``callback`` sees every step of every batch, its dict
    with "batch" and "batches" added."""
    batches = max(1, -(-len(z) // batch_size))
    parts = []
    for b in range(batches):
        def step(info: dict, b: int = b) -> None:
            if callback is not None:
                callback({**info, "batch": b, "batches": batches})

        out = sample_trajectories(denoiser, z[b * batch_size:(b + 1) * batch_size], sigmas, callback=step)
        parts.append({k: out[k].float().cpu().numpy() for k in ("x", "x0_hat")})
    return {k: np.concatenate([p[k] for p in parts], axis=1) for k in ("x", "x0_hat")}


TRAJECTORIES = cache_kind("trajectories")
RUN_COPIES = 5  # x and x0_hat of every step: the batches, their concatenation, and the cache entry's encoding (3)


def trajectory_bytes(n: int, steps: int, d: int) -> int:
    """Upper bound on the memory of one sampling run kept step by step: float32 x and x0_hat (steps, n, d) in
    `RUN_COPIES` copies, plus a margin for the denoiser's work on one batch."""
    return RUN_COPIES * 2 * 4 * steps * n * d + 64 * 2**20


def trajectory_key(dataset, name: str, n: int, steps: int, seed: int, options: dict | None = None) -> str:
    """The key of one sampling run: data, denoiser (its cache id with ``options``), n, steps, seed. Not the batch
    size nor the device: they change the samples by round-off only."""
    return TRAJECTORIES.key(dataset.fingerprint, denoiser_cache_id(name, dataset, **(options or {})), n, steps, seed)


def trajectory_is_cached(dataset, name: str, n: int, steps: int, seed: int, cache=None,
                         options: dict | None = None) -> bool:
    cache = cache or default_cache()
    return trajectory_key(dataset, name, n, steps, seed, options) in cache


def cached_trajectory(dataset, name: str, n: int, steps: int, seed: int, *, options: dict | None = None,
                      device: str = "cpu", batch_size: int = 8, progress: Progress | None = None,
                      on_miss: Callable[[], None] | None = None, cache=None) -> dict[str, np.ndarray]:
    """DDIM with registered denoiser ``name`` (with its ``options``) from the shared initial noise of ``seed``
    through `schedule.ddim_sigmas` (``steps``), every step kept: the one sampling run that `locality sample`, the
    Samples page and the warm-up share, computed once and kept in the disk cache (`trajectory_key`).

    Returns {"x": (S, n, C, H, W), "x0_hat": (S, n, C, H, W), "device": ()}, numpy float32 and the device used.
    ``on_miss()`` runs once when the run is not cached (before waiting for another process that computes it);
    ``progress(fraction, text)`` then hears every DDIM step of every batch.
    """
    cache = cache or default_cache()
    sigmas = ddim_sigmas(steps)

    def step(info: dict) -> None:
        if progress is not None:
            done = info["batch"] * len(sigmas) + info["step"] + 1
            progress(done / (info["batches"] * len(sigmas)),
                     f"{name}: step {info['step'] + 1}/{len(sigmas)} (σ={info['sigma']:.3g})"
                     + (f", batch {info['batch'] + 1}/{info['batches']}" if info["batches"] > 1 else ""))

    def compute() -> dict[str, np.ndarray]:
        need = trajectory_bytes(n, len(sigmas), dataset.d)
        with BUDGET.reserve(need, f"a sampling run of {n:,} images through {steps} steps",
                            "sample fewer images or take fewer steps"):
            denoiser, used = _on_device(get_denoiser(name, dataset, **(options or {})), device)
            z = initial_noise(n, tuple(dataset.shape), seed, sigmas[0], device=used)
            return {**trajectories(denoiser, z, sigmas, batch_size=batch_size, callback=step),
                    "device": np.array(used)}

    return cache.get_or_compute(trajectory_key(dataset, name, n, steps, seed, options), compute,
                                on_miss=on_miss)
