"""The Jacobian page's calls, each a shared job the first time: a network's leading eigenpairs ("leading_basis"),
the Hutchinson estimate of tr J at every level ("trace_estimate"), and the exact tr J from full Jacobians behind a
button ("trace")."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from locality_core.analysis.basis import PROBES, LeadingBasis, last_basis_seconds
from locality_core.views.catalogue import Task
from locality_core.views.defaults import DEFAULTS
from locality_core.views.refs import DataRef
from ui import loading, waiting
from ui.state import noise_label


def leading_task(ref: DataRef, name: str, image_index: int, sigma: float, seed: int) -> Task:
    """The view the warm-up precomputes: same arguments, same precision (`ui.loading.field_precision`)."""
    return Task.of("leading_basis", ref, name=name, image=image_index, sigma=float(sigma), seed=seed,
                   precision=loading.field_precision(), k=DEFAULTS.jacobian_pairs)


def estimate_task(ref: DataRef, name: str, image_index: int, sigmas, seed: int) -> Task:
    return Task.of("trace_estimate", ref, name=name, image=image_index, sigmas=tuple(float(s) for s in sigmas),
                   seed=seed)


def trace_task(ref: DataRef, name: str, image_index: int, sigmas, seed: int) -> Task:
    return Task.of("trace", ref, name=name, image=image_index, sigmas=tuple(float(s) for s in sigmas), seed=seed,
                   precision=loading.field_precision())


def leading(ref: DataRef, name: str, image_index: int, sigma: float, seed: int, slot=None) -> LeadingBasis:
    return waiting.result(leading_task(ref, name, image_index, sigma, seed), slot,
                          what=f"The {DEFAULTS.jacobian_pairs} leading Jacobian eigenpairs of {name} at "
                               f"{noise_label(sigma)} (block Krylov on Jacobian-vector products)")[0]


def estimates(ref: DataRef, name: str, image_index: int, sigmas, seed: int) -> tuple[np.ndarray, np.ndarray]:
    return waiting.result(estimate_task(ref, name, image_index, sigmas, seed),
                          what=f"tr J of {name} estimated at {len(sigmas)} noise levels ({PROBES} random probes "
                               "each, one batched pass)")


def exact_what(data, name: str, n_sigmas: int) -> str:
    """What the exact tr J waits for: a full Jacobian per level, with the time the last one took here."""
    d = int(np.prod(data.shape))
    last = last_basis_seconds(data, name)
    eta = f", about {last:.0f} s each last time" if last is not None else ""
    return f"Exact tr J of {name}: a full Jacobian ({d:,} products) at each of {n_sigmas} noise levels{eta}"


def add_error_bars(fig: go.Figure, errors: dict[str, list[float]]) -> None:
    """One standard error on each estimated curve of a `line_plot`."""
    for trace in fig.data:
        if trace.name in errors:
            trace.error_y = dict(type="data", array=list(errors[trace.name]), visible=True)
