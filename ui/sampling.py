"""Sampling for the Samples page: one denoiser at a time from the same initial noise, trajectories kept, each
drawn as soon as it is done; slow ones with a progress bar and a time estimate. Results live in the library's
disk cache (`locality_core.sampling.cached_trajectory`, the entry the warm-up fills) and in memory."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import streamlit as st
import torch

from locality_core.sampling import cached_trajectory, trajectory_is_cached

from . import data as D
from .memo import cached, memo

# denoisers that sample 8 Fashion-MNIST images in a second or two: drawn first, so the page fills quickly
FAST = ("unet", "wiener", "optimal")


def order(names: list[str]) -> list[str]:
    """The fast denoisers first (the order the page computes them in), the others as chosen."""
    return [n for n in names if n in FAST] + [n for n in names if n not in FAST]


def run_key(data_key, name: str, n: int, steps: int, seed: int, device: str, options: dict | None = None) -> tuple:
    """A hashable key of one sampling run; ``options`` are the denoiser's (the registry's defaults when empty)."""
    data = D.dataset(*data_key)
    options = tuple(sorted((options or {}).items()))
    return (data_key, name, D.denoiser_id(name, data, **dict(options)), n, steps, seed, device, options)


def is_cached(key: tuple) -> bool:
    """In memory or on disk already (a key lookup, no computation)."""
    data_key, name, _, n, steps, seed, _, options = key
    return cached("samples", key) or trajectory_is_cached(D.dataset(*data_key), name, n, steps, seed,
                                                          options=dict(options))


def wait_text(dataset: str, name: str, n: int, steps: int) -> str:
    """What the page waits for: the warm-up computing these very samples (with its time), or our own run."""
    from locality_core import warmup

    busy = warmup.waiting_text(dataset, "samples-fast" if name in FAST else "samples-slow")
    if busy and name in warmup.DEFAULTS.sample_denoisers:
        return f"**{name}**: {busy}"
    pace = "a second or two" if name in FAST else "seconds to minutes on a CPU: progress and time left below"
    return f"**{name}**: sampling {n} images through {steps} DDIM steps ({pace})…"


def sample(key: tuple, progress: Callable[[float, str], None] | None = None) -> dict:
    """{"x": (S, n, C, H, W), "x0_hat": (S, n, C, H, W), "device": str} of one denoiser, numpy float32.

    ``progress(fraction, text)`` hears each DDIM step with the time left, estimated from the steps so far."""
    data_key, name, _, n, steps, seed, device, options = key

    def compute():
        start = time.perf_counter()

        def step(info):
            if progress is not None:
                done = info["step"] + 1
                left = (time.perf_counter() - start) / done * (steps - done)
                progress(done / steps, f"{name}: step {done}/{steps} (σ={info['sigma']:.3g}), about {left:.0f} s "
                                       "left")

        arrays = cached_trajectory(D.dataset(*data_key), name, n, steps, seed, device=device, callback=step,
                                   options=dict(options))
        return {"x": arrays["x"], "x0_hat": arrays["x0_hat"], "device": str(arrays.get("device", "cpu"))}

    return memo("samples", key, compute, max_entries=24)


@st.cache_data(max_entries=64, show_spinner=False)
def nearest(data_key: tuple[str, str, str], samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index and L2 distance of the training image nearest to each sample (n, C, H, W)."""
    from locality_core.metrics import nearest_training

    idx, dist = nearest_training(torch.from_numpy(samples), D.dataset(*data_key).train)
    return idx.numpy(), dist.numpy()
