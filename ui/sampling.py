"""Sampling for the Samples page: every chosen denoiser from the same initial noise, trajectories kept, with a
progress bar; results memoised by their parameters and the denoisers' cache ids, in memory and on disk."""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import streamlit as st
import torch

from locality_core.denoisers import get_denoiser
from locality_core.schedule import ddim_sigmas

from . import data as D
from .memo import cached, memo


def _on_device(denoiser, device: str):
    """A copy of ``denoiser`` on ``device`` ("cpu": the shared instance itself)."""
    if device == "cpu" or not isinstance(denoiser, torch.nn.Module):
        return denoiser, "cpu"
    try:
        return copy.deepcopy(denoiser).to(device), device
    except (RuntimeError, AssertionError, TypeError):  # no such device, or a model that cannot move
        return denoiser, "cpu"


def run_key(data_key, names: tuple[str, ...], n: int, steps: int, seed: int, device: str) -> tuple:
    data = D.dataset(*data_key)
    return (data_key, tuple((name, D.denoiser_id(name, data)) for name in names), n, steps, seed, device)


def is_cached(key: tuple) -> bool:
    return cached("samples", key)


def sample(key: tuple, progress: Callable[[float, str], None] | None = None) -> dict:
    """{"sigmas", "x": {name: (S, n, C, H, W)}, "x0_hat": {...}, "devices": {name: device}} as numpy float32.

    Kept in memory, and on disk per denoiser (the library's array cache, keyed by data fingerprint, denoiser
    cache id, n, steps, seed): samples prepared before a talk survive a restart of the app.
    """
    data_key, named, n, steps, seed, device = key

    def compute():
        from locality_core.cache import default_cache

        data = D.dataset(*data_key)
        cache = default_cache()
        sigmas = ddim_sigmas(steps)
        out = {"sigmas": np.array(sigmas), "x": {}, "x0_hat": {}, "devices": {}}
        for i, (name, model_id) in enumerate(named):
            disk_key = cache.make_key("app-samples", data.fingerprint, model_id, name, n, steps, seed)
            arrays = cache.get_or_compute(disk_key, lambda name=name, i=i: _trajectory(
                data, name, n, sigmas, seed, device, progress, i, len(named)))
            out["x"][name], out["x0_hat"][name] = arrays["x"], arrays["x0_hat"]
            out["devices"][name] = str(arrays["device"]) if "device" in arrays else "cpu"
        return out

    return memo("samples", key, compute, max_entries=12)


def _trajectory(data, name: str, n: int, sigmas: list[float], seed: int, device: str, progress, index: int,
                count: int) -> dict:
    """DDIM from the shared initial noise (seed) with denoiser ``name``, every step kept."""
    from locality_core.sampling import initial_noise, sample_ddim

    z = initial_noise(n, tuple(data.shape), seed, sigmas[0])
    denoiser, used = _on_device(get_denoiser(name, data), device)
    xs, x0s = [], []

    def keep(info):
        xs.append(info["x"].float().cpu().numpy())
        x0s.append(info["x0_hat"].float().cpu().numpy())
        if progress:
            progress((index + (info["step"] + 1) / len(sigmas)) / count,
                     f"{name}: step {info['step'] + 1}/{len(sigmas)} (t={info['t']:.0f}, σ={info['sigma']:.3g})")

    with torch.no_grad():
        sample_ddim(denoiser, z.to(used), sigmas, callback=keep)
    return {"x": np.stack(xs), "x0_hat": np.stack(x0s), "device": np.array(used)}


@st.cache_data(max_entries=64, show_spinner=False)
def nearest(data_key: tuple[str, str, str], samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index and L2 distance of the training image nearest to each sample (n, C, H, W)."""
    from locality_core.metrics import nearest_training

    idx, dist = nearest_training(torch.from_numpy(samples), D.dataset(*data_key).train)
    return idx.numpy(), dist.numpy()
