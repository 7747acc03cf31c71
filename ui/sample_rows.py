"""Sampling for the Samples page: one shared job per denoiser from the same initial noise, trajectories kept, each
row drawn as soon as its job is done; the slow ones with progress and time left.

The runs are the library's (`locality_core.analysis.sampling.cached_trajectory`, through the "samples" view
function): the disk entry that `locality sample` and the warm-up fill, read in milliseconds, so the page keeps no
copy. Only the nearest training images are cached here (st.cache_data): the library does not keep them, and they
cost a pass over the training set.
"""

from __future__ import annotations

import numpy as np
import streamlit as st
import torch

from locality_core.analysis.metrics import nearest_training
from locality_core.views.catalogue import Task
from locality_core.views.defaults import DEFAULTS
from locality_core.views.jobs import Job
from locality_core.views.refs import DataRef
from ui import loading, waiting

FAST = DEFAULTS.fast_samplers


def order(names: list[str]) -> list[str]:
    """The UNet and the analytical denoiser first (the paper's comparison, side by side), then the fast ones,
    then the others as chosen."""
    first = [n for n in ("unet", "analytical") if n in names]
    return first + [n for n in names if n in FAST and n not in first] + \
        [n for n in names if n not in FAST and n not in first]


def task(ref: DataRef, name: str, n: int, steps: int, seed: int, options: dict | None = None,
         device: str = "cpu") -> Task:
    extra = {} if device == "cpu" else {"device": device}
    return Task.of("samples", ref, name=name, n=n, steps=steps, seed=seed, options=options or {}, **extra)


def start(ref: DataRef, name: str, n: int, steps: int, seed: int, options: dict | None = None,
          device: str = "cpu") -> Job | None:
    """Start (or join) a run's job now, so that it computes while the page waits for others (None: nothing to do
    or inline mode)."""
    return waiting.start(task(ref, name, n, steps, seed, options, device))


def what(name: str, n: int, steps: int) -> str:
    pace = "a second or two" if name in FAST else "seconds to minutes on a CPU"
    return f"{name}: {n} samples through {steps} DDIM steps ({pace})"


def sample(ref: DataRef, name: str, n: int, steps: int, seed: int, options: dict | None = None,
           device: str = "cpu", slot=None) -> dict:
    """{"x": (S, n, C, H, W), "x0_hat": (S, n, C, H, W), "device"} of one denoiser, numpy float32: a shared job
    when new (progress and time left in ``slot``)."""
    run = waiting.result(task(ref, name, n, steps, seed, options, device), slot, what=what(name, n, steps))
    return {"x": run["x"], "x0_hat": run["x0_hat"], "device": str(run.get("device", "cpu"))}


@st.cache_data(max_entries=64, show_spinner=False)
def nearest(ref: DataRef, samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index and L2 distance of the training image nearest to each sample (n, C, H, W)."""
    idx, dist = nearest_training(torch.from_numpy(samples), loading.dataset(ref).train)
    return idx.numpy(), dist.numpy()
