"""The pages' computations, as named functions of (data set, view parameters): what a page draws, what the warm-up
precomputes and what a job runs are the same calls, so the same cache keys.

Glossary
    view function  ``fn(data, *, progress=None, **params) -> result``, registered with `view_function`: every
                   long computation a page makes (statistics, masks, a denoiser's fields at a pixel, samples, a
                   Jacobian basis, tr J, the memorisation sides). It computes through the library's cached calls,
                   so a second call is a cache hit; ``ready(data, **params)`` says so without computing
    Task           a view function, a `DataRef` and the parameters: a small value with a ``key`` (the job key),
                   a ``title`` (what a page says it waits for) and a JSON form (what a worker process receives)

Adding a page's view: write ``fn`` and ``ready`` here with `view_function`; the page calls ``Task.of(...)``
through `ui.jobs`, the warm-up lists the default one in `views.plan`; `tests/test_views.py` checks that a new
view function is ready after it runs, for every registered one.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from locality_core.analysis import generalisation
from locality_core.analysis.basis import (
    PROBES,
    JacobianBasis,
    LeadingBasis,
    basis_is_cached,
    denoiser_basis,
    denoiser_leading_basis,
    denoiser_trace_estimates,
    leading_basis_is_cached,
    trace_estimates_are_cached,
)
from locality_core.analysis.fields import denoiser_field, field_is_cached
from locality_core.analysis.linear_fit import fit_linear_denoiser
from locality_core.analysis.sampling import cached_trajectory, trajectory_is_cached
from locality_core.data import Dataset
from locality_core.denoisers.analytical import MASKS, cached_mask, default_theta
from locality_core.denoisers.wiener import wiener_matrix
from locality_core.progress import Progress, part
from locality_core.stats.covariance import DataStats, get_stats, stats_key
from locality_core.store.cache import cache_kind, default_cache
from locality_core.views.refs import DataRef


@dataclass(frozen=True)
class ViewFunction:
    name: str
    compute: Callable[..., object]
    ready: Callable[..., bool]
    describe: Callable[..., str]


VIEWS: dict[str, ViewFunction] = {}


def view_function(name: str, ready: Callable[..., bool], describe: Callable[..., str]):
    """Register ``fn(data, *, progress=None, **params)`` as view function ``name`` (a decorator)."""
    def add(fn):
        if name in VIEWS:
            raise ValueError(f"view function {name!r} registered twice")
        VIEWS[name] = ViewFunction(name, fn, ready, describe)
        return fn
    return add


def _frozen(value):
    """Parameters as hashable values: lists become tuples, dicts sorted pairs (JSON gives lists back)."""
    if isinstance(value, dict):
        return tuple(sorted((k, _frozen(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_frozen(v) for v in value)
    return value


@dataclass(frozen=True)
class Task:
    view: str
    ref: DataRef
    params: tuple[tuple[str, object], ...] = ()

    @classmethod
    def of(cls, view: str, ref: DataRef, **params) -> Task:
        if view not in VIEWS:
            raise ValueError(f"unknown view function {view!r}; known: {', '.join(VIEWS)}")
        return cls(view, ref, tuple(sorted((k, _frozen(v)) for k, v in params.items())))

    @property
    def kwargs(self) -> dict:
        return dict(self.params)

    @property
    def key(self) -> str:
        return f"{self.view}/{self.ref.id}/{json.dumps(self.params, separators=(',', ':'))}"

    @property
    def title(self) -> str:
        return f"{self.ref.label}: {VIEWS[self.view].describe(**self.kwargs)}"

    def run(self, progress: Progress | None = None, on_miss: Callable[[], None] | None = None):
        """The result (computed, or read back). ``on_miss()``, for the view functions that take it, runs once when
        an entry is not cached, before it is computed: a page draws a quick preview then."""
        extra = {} if on_miss is None else {"on_miss": on_miss}
        return VIEWS[self.view].compute(self.ref.load(), progress=progress, **extra, **self.kwargs)

    def ready(self) -> bool:
        return VIEWS[self.view].ready(self.ref.load(), **self.kwargs)

    def to_json(self) -> str:
        return json.dumps({"view": self.view, "ref": [self.ref.name, self.ref.params, self.ref.transform],
                           "params": self.params})

    @classmethod
    def from_json(cls, text: str) -> Task:
        blob = json.loads(text)
        name, params, transform = blob["ref"]
        return cls(blob["view"], DataRef(name, _frozen(params), _frozen(transform)), _frozen(blob["params"]))


def _levels(sigmas) -> str:
    return f"{len(sigmas)} noise level{'s' if len(sigmas) != 1 else ''}"


# ---------------------------------------------------------------- statistics and masks (Sensitivity, Components,
# Locality follows the data)

@view_function("stats", ready=lambda data: stats_key(data) in default_cache(),
               describe=lambda: "statistics (mean, covariance, eigendecomposition)")
def statistics(data: Dataset, *, progress: Progress | None = None) -> DataStats:
    return get_stats(data, progress=progress)


def _masks_ready(data: Dataset, sigmas, theta=None, mode="global") -> bool:
    if stats_key(data) not in default_cache():
        return False
    theta = default_theta(data.shape) if theta is None else float(theta)
    return all(MASKS.key(data.fingerprint, f"{s:.6g}", f"{theta:.6g}", mode) in default_cache() for s in sigmas)


@view_function("masks", ready=_masks_ready,
               describe=lambda sigmas, theta=None, mode="global": f"analytical masks at {_levels(sigmas)}")
def masks(data: Dataset, *, sigmas, theta: float | None = None, mode: str = "global",
          progress: Progress | None = None) -> DataStats:
    """The analytical denoiser's masks at every sigma (and the statistics they come from); returns the statistics.
    The pages read single columns (`analytical.mask_column`), which are then cache hits."""
    stats = get_stats(data, progress=part(progress, 0.0, 0.5, "statistics: "))
    for i, sigma in enumerate(sigmas):
        if progress:
            progress(0.5 + 0.5 * i / len(sigmas), f"analytical mask at σ={sigma:.3g}")
        cached_mask(stats, sigma, theta, mode)
    return stats


# ---------------------------------------------------------------- fields of a trained denoiser (Sensitivity)

@view_function("field", ready=lambda data, name, pixel, sigmas, n, seed, precision: all(
    field_is_cached(data, name, pixel, [s], n=n, seed=seed, precision=precision) for s in sigmas),
    describe=lambda name, pixel, sigmas, n, seed, precision:
    f"{name} field of pixel {tuple(pixel)} at {_levels(sigmas)} ({n} noisy images each)")
def field(data: Dataset, *, name: str, pixel, sigmas, n: int, seed: int, precision: str,
          progress: Progress | None = None, on_miss: Callable[[], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(abs, signed) fields, (S, C_out, C_in, H, W): one cached call per noise level, as the page reads them;
    ``on_miss()`` runs before the first level that is not cached."""
    fields, pending = [], [on_miss] if on_miss else []

    def missed() -> None:
        while pending:
            pending.pop()()

    for i, sigma in enumerate(sigmas):
        if progress:
            progress(i / len(sigmas), f"σ={sigma:.3g} ({i + 1}/{len(sigmas)})")
        fields.append(denoiser_field(data, name, tuple(pixel), [float(sigma)], n=n, seed=seed, precision=precision,
                                     on_miss=missed))
    return np.concatenate([f.abs_mean for f in fields]), np.concatenate([f.signed_mean for f in fields])


# ---------------------------------------------------------------- samples (Samples)

@view_function("samples", ready=lambda data, name, n, steps, seed, options=(), device="cpu": trajectory_is_cached(
    data, name, n, steps, seed, options=dict(options)),
    describe=lambda name, n, steps, seed, options=(), device="cpu":
    f"{n} {name} samples, {steps} DDIM steps, seed {seed}" + (f" on {device}" if device != "cpu" else ""))
def samples(data: Dataset, *, name: str, n: int, steps: int, seed: int, options=(), device: str = "cpu",
            progress: Progress | None = None) -> dict[str, np.ndarray]:
    """The DDIM trajectories of one denoiser from the shared noise of ``seed``: {"x", "x0_hat", "device"},
    (S, n, C, H, W). ``device`` is where a new run computes (not part of the cache key: round-off only)."""
    return cached_trajectory(data, name, n, steps, seed, options=dict(options), device=device, progress=progress)


# ---------------------------------------------------------------- Jacobian bases (Jacobian basis)

@view_function("basis", ready=lambda data, name, image, sigma, seed, precision: basis_is_cached(
    data, name, image, sigma, seed=seed, precision=precision),
    describe=lambda name, image, sigma, seed, precision:
    f"{name} Jacobian basis of test image #{image} at σ={sigma:.3g}")
def basis(data: Dataset, *, name: str, image: int, sigma: float, seed: int, precision: str,
          progress: Progress | None = None) -> tuple[JacobianBasis, np.ndarray]:
    """The basis and the noisy image y (C, H, W) it is taken at."""
    if progress:
        progress(0.0, f"{name}: full Jacobian at σ={sigma:.3g}")
    return denoiser_basis(data, name, image, sigma, seed=seed, precision=precision)


@view_function("leading_basis", ready=lambda data, name, image, sigma, seed, precision, k: leading_basis_is_cached(
    data, name, image, sigma, seed=seed, precision=precision, k=k),
    describe=lambda name, image, sigma, seed, precision, k:
    f"{name}: the {k} leading Jacobian eigenpairs of test image #{image} at σ={sigma:.3g}")
def leading_basis(data: Dataset, *, name: str, image: int, sigma: float, seed: int, precision: str, k: int,
                  progress: Progress | None = None) -> tuple[LeadingBasis, np.ndarray]:
    """The leading eigenpairs (with residuals) and the noisy image y they are taken at."""
    if progress:
        progress(0.0, f"block Krylov on Jacobian-vector products at σ={sigma:.3g}")
    return denoiser_leading_basis(data, name, image, sigma, seed=seed, precision=precision, k=k)


@view_function("trace_estimate", ready=lambda data, name, image, sigmas, seed: trace_estimates_are_cached(
    data, name, image, sigmas, seed=seed),
    describe=lambda name, image, sigmas, seed: f"{name}: tr J estimated at {_levels(sigmas)}")
def trace_estimates(data: Dataset, *, name: str, image: int, sigmas, seed: int,
                    progress: Progress | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Hutchinson tr J with its standard error at every sigma (one batched pass)."""
    if progress:
        progress(0.0, f"{len(sigmas) * PROBES} random probes in one batched pass")
    return denoiser_trace_estimates(data, name, image, list(sigmas), seed=seed)


@view_function("trace", ready=lambda data, name, image, sigmas, seed, precision: all(
    basis_is_cached(data, name, image, s, seed=seed, precision=precision) for s in sigmas),
    describe=lambda name, image, sigmas, seed, precision: f"exact tr J of {name} at {_levels(sigmas)}")
def trace(data: Dataset, *, name: str, image: int, sigmas, seed: int, precision: str,
          progress: Progress | None = None) -> list[float]:
    """tr J at every sigma: one full Jacobian (a cached basis) each."""
    out = []
    for i, sigma in enumerate(sigmas):
        if progress:
            progress(i / len(sigmas), f"full Jacobian at σ={sigma:.3g} ({i + 1}/{len(sigmas)})")
        out.append(denoiser_basis(data, name, image, sigma, seed=seed, precision=precision)[0].trace)
    return out


# ---------------------------------------------------------------- memorisation to generalisation

@view_function("memorisation", ready=lambda data, kind, sizes: all(
    generalisation.side_is_cached(data, kind, n, s) for n in sizes for s in "AB"),
    describe=lambda kind, sizes: f"memorisation, {kind} from subsets of N = {', '.join(f'{n:,}' for n in sizes)}")
def memorisation(data: Dataset, *, kind: str, sizes, progress: Progress | None = None) -> list[dict]:
    """The table's rows for denoisers of ``kind`` built from the subsets of each size (both sides cached)."""
    return generalisation.table(data, kind, list(sizes), progress=progress)


# ---------------------------------------------------------------- gradient descent to the Wiener filter (Sensitivity)

LINEAR_FITS = cache_kind("linear-fit")


def _linear_fit_key(data: Dataset, sigma, pixel, steps, seed) -> str:
    return LINEAR_FITS.key(data.fingerprint, f"{float(sigma):.6g}", f"{pixel[0]},{pixel[1]}", steps, seed)


@view_function("linear_fit", ready=lambda data, sigma, pixel, steps, seed: _linear_fit_key(
    data, sigma, pixel, steps, seed) in default_cache(),
    describe=lambda sigma, pixel, steps, seed: f"a linear denoiser trained by Adam ({steps} steps) at σ={sigma:.3g}")
def linear_fit(data: Dataset, *, sigma: float, pixel, steps: int, seed: int,
               progress: Progress | None = None) -> dict[str, np.ndarray]:
    """An affine denoiser trained by gradient descent at ``sigma``, and its way to P_sigma: the recorded steps, the
    relative distance to P_sigma, the pixel's rows of A at each, and the closed-form rows (small arrays, cached)."""
    def compute() -> dict[str, np.ndarray]:
        stats = get_stats(data)
        P = wiener_matrix(stats.eigvecs, stats.eigvals, float(sigma))
        r = fit_linear_denoiser(data.train, float(sigma), P, pixel=tuple(pixel), steps=steps, seed=seed,
                                record_every=max(1, steps // 60), progress=progress)
        return {"steps": r.steps, "rel_error": r.rel_error, "fields": r.fields, "target": r.target_field}

    return default_cache().get_or_compute(_linear_fit_key(data, sigma, pixel, steps, seed), compute)
