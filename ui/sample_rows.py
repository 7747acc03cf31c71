"""Sampling for the Samples page: one denoiser at a time from the same initial noise, trajectories kept, each
drawn as soon as it is done; slow ones with a progress bar and a time estimate.

The runs are the library's (`locality_core.sampling.cached_trajectory`): the disk entry that `locality sample`
and the warm-up fill, read in milliseconds, so the page keeps no copy. Only the nearest training images are
cached here (st.cache_data): the library does not keep them, and they cost a pass over the training set.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import streamlit as st
import torch

from locality_core.analysis.sampling import cached_trajectory
from locality_core.views import warmup
from ui import loading

# denoisers that sample 8 Fashion-MNIST images in a second or two: drawn first, so the page fills quickly
FAST = warmup.FAST_SAMPLERS


def order(names: list[str]) -> list[str]:
    """The fast denoisers first (the order the page computes them in), the others as chosen."""
    return [n for n in names if n in FAST] + [n for n in names if n not in FAST]


def wait_text(dataset: str, name: str, n: int, steps: int) -> str:
    """What the page waits for: the warm-up computing these very samples (with its time), or our own run."""

    busy = warmup.waiting_text(dataset, "samples-fast" if name in FAST else "samples-slow")
    if busy and name in warmup.DEFAULTS.sample_denoisers:
        return f"**{name}**: {busy}"
    pace = "a second or two" if name in FAST else "seconds to minutes on a CPU: progress and time left below"
    return f"**{name}**: sampling {n} images through {steps} DDIM steps ({pace})…"


def sample(data_key: tuple[str, str, str], name: str, n: int, steps: int, seed: int, device: str,
           options: dict | None = None, *, on_miss: Callable[[], None] | None = None,
           progress: Callable[[float, str], None] | None = None) -> dict:
    """{"x": (S, n, C, H, W), "x0_hat": (S, n, C, H, W), "device": str} of one denoiser, numpy float32.

    ``on_miss()`` runs once when the run is not cached yet (before it is computed, or waited for);
    ``progress(fraction, text)`` then hears each DDIM step with the time left, estimated from the steps so far."""
    start = time.perf_counter()

    def hear(fraction: float, text: str) -> None:
        nonlocal start
        if fraction == 0.0:  # the run is not cached: say so, and time it from here
            start = time.perf_counter()
            if on_miss is not None:
                on_miss()
        elif progress is not None:
            left = (time.perf_counter() - start) / fraction * (1.0 - fraction)
            progress(fraction, f"{text}, about {left:.0f} s left")

    run = cached_trajectory(loading.dataset(*data_key), name, n, steps, seed, options=options, device=device,
                            progress=hear)
    return {"x": run["x"], "x0_hat": run["x0_hat"], "device": str(run.get("device", "cpu"))}


@st.cache_data(max_entries=64, show_spinner=False)
def nearest(data_key: tuple[str, str, str], samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index and L2 distance of the training image nearest to each sample (n, C, H, W)."""
    from locality_core.analysis.metrics import nearest_training

    idx, dist = nearest_training(torch.from_numpy(samples), loading.dataset(*data_key).train)
    return idx.numpy(), dist.numpy()
