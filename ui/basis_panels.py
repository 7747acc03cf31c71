"""The Jacobian page's calls: bases and the exact tr J as shared jobs ("basis", "trace" view functions), and the
batched Hutchinson estimate of tr J that stands in for the exact curve until it is computed. The estimate is
cached here (st.cache_data) because the library does not keep it."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import streamlit as st
import torch

from locality_core.analysis.basis import JacobianBasis, last_basis_seconds, noisy_test_image, trace_estimate
from locality_core.denoisers.registry import get_denoiser
from locality_core.views.catalogue import Task
from locality_core.views.refs import DataRef
from ui import loading, waiting
from ui.state import noise_label

PROBES = 32  # random probes per noise level of the tr J estimate


def basis_task(ref: DataRef, name: str, image_index: int, sigma: float, seed: int) -> Task:
    """The basis the warm-up precomputes: same arguments, same precision (`ui.loading.field_precision`)."""
    return Task.of("basis", ref, name=name, image=image_index, sigma=float(sigma), seed=seed,
                   precision=loading.field_precision())


def trace_task(ref: DataRef, name: str, image_index: int, sigmas, seed: int) -> Task:
    return Task.of("trace", ref, name=name, image=image_index, sigmas=tuple(float(s) for s in sigmas), seed=seed,
                   precision=loading.field_precision())


def model_basis(ref: DataRef, data, name: str, image_index: int, sigma: float, seed: int,
                slot=None) -> JacobianBasis:
    return waiting.result(basis_task(ref, name, image_index, sigma, seed), slot,
                          what=basis_what(data, name, sigma))[0]


def basis_what(data, name: str, sigma: float) -> str:
    """What a basis waits for, with the time the last full Jacobian of this denoiser took here (measured)."""
    d = int(np.prod(data.shape))
    last = last_basis_seconds(data, name)
    eta = f"about {last:.0f} s last time" if last is not None else f"roughly {max(2, round(d / 120))} s on 2 cores"
    return (f"Full Jacobian of {name} at {noise_label(sigma)} ({d:,} vector-Jacobian products, "
            f"{loading.field_precision()}, {eta})")


def estimate_wait_text(data, name: str, n_sigmas: int) -> str:
    """The spinner of the tr J estimate: what it computes, and its time scaled from the last full Jacobian."""
    d = int(np.prod(data.shape))
    last = last_basis_seconds(data, name)
    eta = "" if last is None else f", about {max(1, round(last * PROBES * n_sigmas / d))} s"
    return (f"Estimating tr J of {name} at {n_sigmas} noise levels ({PROBES} random probes each, "
            f"{PROBES * n_sigmas} vector-Jacobian products in one batched pass{eta})…")


@st.cache_data(max_entries=64, show_spinner=False)
def trace_estimates(ref: DataRef, name: str, model_id: str, image_index: int, sigmas: tuple[float, ...],
                    seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Hutchinson tr J and its standard error at each sigma, at the noisy images `denoiser_basis` takes (same
    image, same noise), all levels in one batched pass."""
    data = loading.dataset(ref)
    ys = torch.stack([noisy_test_image(data, image_index, s, seed) for s in sigmas])
    return trace_estimate(get_denoiser(name, data), ys, sigmas, probes=PROBES, seed=seed)


def add_error_bars(fig: go.Figure, errors: dict[str, list[float]]) -> None:
    """One standard error on each estimated curve of a `line_plot`."""
    for trace in fig.data:
        if trace.name in errors:
            trace.error_y = dict(type="data", array=list(errors[trace.name]), visible=True)
