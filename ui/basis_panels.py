"""The Jacobian page's calls: bases (the library's disk cache, with their measured time), honest waiting texts,
and the batched Hutchinson estimate of tr J that stands in for the exact curve until it is computed. The
estimate is cached here (st.cache_data) because the library does not keep it."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import streamlit as st
import torch

from locality_core.analysis import basis
from locality_core.denoisers.evaluate import noisy_heldout
from locality_core.views import warmup
from ui import loading
from ui.state import noise_label

PROBES = 32  # random probes per noise level of the tr J estimate


def model_basis(data, name: str, image_index: int, sigma: float, seed: int) -> basis.JacobianBasis:
    """The basis the warm-up precomputes: same arguments, same precision (`ui.data.field_precision`)."""
    return basis.denoiser_basis(data, name, image_index, sigma, seed=seed, precision=loading.field_precision())[0]


def basis_is_cached(data, name: str, image_index: int, sigma: float, seed: int) -> bool:
    return basis.basis_is_cached(data, name, image_index, sigma, seed=seed, precision=loading.field_precision())


def basis_wait_text(data, name: str, sigma: float, dataset: str, task: str) -> str:
    """What the page waits for, and roughly how long: the warm-up's own status when it is computing this view,
    else the time the last full Jacobian of this denoiser took here (measured), else a rough figure."""
    busy = warmup.waiting_text(dataset, task)
    if busy:
        return busy
    d = int(np.prod(data.shape))
    last = basis.last_basis_seconds(data, name)
    eta = (f"about {last:.0f} s, as measured last time" if last is not None else
           f"roughly {max(2, round(d / 120))} s on 2 CPU cores")
    return (f"Full Jacobian of {name} at {noise_label(sigma)}: {d:,} vector-Jacobian products in batches of 128 "
            f"after one forward pass ({loading.field_precision()}), {eta}; cached afterwards…")


def estimate_wait_text(data, name: str, n_sigmas: int) -> str:
    """The spinner of the tr J estimate: what it computes, and its time scaled from the last full Jacobian."""
    d = int(np.prod(data.shape))
    last = basis.last_basis_seconds(data, name)
    eta = "" if last is None else f", about {max(1, round(last * PROBES * n_sigmas / d))} s"
    return (f"Estimating tr J of {name} at {n_sigmas} noise levels ({PROBES} random probes each, "
            f"{PROBES * n_sigmas} vector-Jacobian products in one batched pass{eta})…")


@st.cache_data(max_entries=64, show_spinner=False)
def trace_estimates(data_key: tuple[str, str, str], name: str, model_id: str, image_index: int,
                    sigmas: tuple[float, ...], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Hutchinson tr J and its standard error at each sigma, the noisy inputs drawn as `denoiser_basis` draws
    them (same image, same noise), all levels in one batched pass."""
    from locality_core.denoisers.registry import get_denoiser

    data = loading.dataset(*data_key)
    x0 = data.test[image_index]
    ys = torch.stack([noisy_heldout(x0[None], float(s), seed)[0, 0] for s in sigmas])
    return basis.trace_estimate(get_denoiser(name, data), ys, sigmas, probes=PROBES, seed=seed)


def add_error_bars(fig: go.Figure, errors: dict[str, list[float]]) -> None:
    """One standard error on each estimated curve of a `line_plot`."""
    for trace in fig.data:
        if trace.name in errors:
            trace.error_y = dict(type="data", array=list(errors[trace.name]), visible=True)
